"""Dataset views at scale: feature extraction on Dask, neighbours, t-SNE and UMAP (not a test).

    python benchmarks/scale.py                                   # the issue's sizes (hours on 2 cores)
    python benchmarks/scale.py --images 64 --workers 1,2 --points 20000 --vectors 100000

* extraction: a generated folder of ``--images`` synthetic photos (smooth colour fields with
  noise, 256 x 256 JPEG) through VGG16's conv stack to block5_pool at ``--size`` (224), into a
  fresh feature store each time: in this process (no Dask: ``0``), then on local clusters of 1, 2
  and 4 workers (``--workers``, run in the order given; the machine's cores shared among them).
  Images/s over the whole run, cluster start excluded; the store's bytes per image. A line of
  progress every 5%; ``scale.json`` is rewritten after every configuration.
* neighbours: ``--vectors`` feature-like vectors (ReLU of a random 512 x 64 map of a mixture of
  100 Gaussians): pynndescent's build time and query time for ``--queries`` queries, recall@10
  against the exact brute force on those queries, for cosine and l2.
* embeddings: openTSNE and UMAP on ``--points`` of those vectors (wall time, PCA to 50 included).

Writes ``scale.json``; ``--out`` (default benchmarks/results/scale).
Weights: as benchmarks/run.py (the synthetic notop file unless ``--weights``).
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--layer", default="block5_pool")
    p.add_argument("--workers", default="0,1,2,4", help="local cluster sizes, comma-separated, in run order; 0: this process, no Dask")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rows-per-chunk", type=int, default=32)
    p.add_argument("--vectors", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=1_000)
    p.add_argument("--points", type=int, default=100_000)
    p.add_argument("--only", default="extract,neighbours,embed")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale")
    return p.parse_args(argv)


def make_folder(root: Path, n: int, side: int = 256, seed: int = 0) -> list:
    """``n`` synthetic photos: a smooth random colour field (bilinear from 4 x 4) plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((side, side), Image.BILINEAR)
        pixels = np.asarray(coarse, np.int16) + rng.integers(-20, 21, (side, side, 3), dtype=np.int16)
        path = root / f"{i // 1000:03d}" / f"img{i:06d}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def bench_extract(args, weights: Path, work: Path, on_row=lambda rows: None) -> list:
    import engine
    from engine.scale.digest import file_digest
    from engine.scale.extract import ModelSpec, engine_model_plugin, extract, local_client, spec_for
    from engine.scale.store import FeatureStore

    files = make_folder(work / "images", args.images)
    model = engine.load(weights)
    spec = spec_for(model, args.layer, (args.size, args.size), False, file_digest(weights), args.rows_per_chunk)
    rows = []
    for workers in [int(w) for w in args.workers.split(",") if w]:
        store = FeatureStore.create_or_open(work / f"store{workers}.zarr", spec)
        client = local_client(workers) if workers else None
        try:
            if client is not None:  # the workers load the model before the clock starts
                client.register_plugin(engine_model_plugin(ModelSpec(str(weights))), name=ModelSpec(str(weights)).plugin_name)
            summary = extract(store, files, ModelSpec(str(weights)), client=client, batch=args.batch,
                              progress=_every(max(1, len(files) // 20), workers))
        finally:
            if client is not None:
                cluster = client.cluster
                client.close()
                cluster.close()
        rate = summary.computed / summary.seconds
        per_image = store.size_on_disk() / max(1, summary.computed)
        rows.append({"what": "extract", "workers": workers, "images": summary.computed, "seconds": summary.seconds,
                     "images_per_s": rate, "store_bytes_per_image": per_image})
        print(f"extract workers={workers or 'none (this process)'}: {summary.computed} images in {summary.seconds:.1f} s, "
              f"{rate:.2f} images/s, {per_image / 1024:.1f} KiB/image", flush=True)
        on_row(rows)
    return rows


def _every(step: int, workers: int):
    """A ``progress`` callback printing a line each ``step`` images (rate and ETA so far)."""
    last = [0]

    def report(done, total, rate, eta):
        if done - last[0] >= step or done == total:
            last[0] = done
            print(f"  workers={workers}: {done}/{total} images, {rate:.2f} images/s, ETA {eta / 60:.1f} min", flush=True)
    return report


def feature_like(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(100, 64)) * 3
    latent = centres[rng.integers(0, 100, n)] + rng.normal(size=(n, 64))
    return np.maximum(latent @ rng.normal(size=(64, 512)) / 8, 0).astype(np.float32)


def bench_neighbours(args) -> list:
    from engine.scale import neighbours

    x = feature_like(args.vectors)
    queries = np.arange(0, args.vectors, max(1, args.vectors // args.queries))[: args.queries]
    rows = []
    for metric in ("cosine", "l2"):
        start = time.perf_counter()
        exact, _ = neighbours.exact_knn(x, x[queries], 10, metric, exclude=queries)
        exact_s = time.perf_counter() - start
        start = time.perf_counter()
        index = neighbours.ApproximateIndex(x, metric, seed=0)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        approx, _ = index.query(x[queries], 10, exclude=queries)
        query_s = time.perf_counter() - start
        recall = neighbours.recall_at_k(approx, exact)
        rows.append({"what": "neighbours", "metric": metric, "vectors": args.vectors, "queries": len(queries),
                     "exact_s": exact_s, "build_s": build_s, "query_s": query_s, "recall_at_10": recall})
        print(f"neighbours {metric}: {args.vectors} vectors, build {build_s:.1f} s (JIT included), "
              f"{len(queries)} queries {query_s:.2f} s, exact {exact_s:.2f} s, recall@10 {recall:.4f}", flush=True)
    return rows


def bench_embed(args) -> list:
    from engine.scale import embed

    x = feature_like(args.points, seed=1)
    rows = []
    for name, run in (("opentsne", lambda: embed.tsne_2d(x, 30, seed=0, jobs=os.cpu_count() or 1)),
                      ("umap", lambda: embed.umap_2d(x, seed=0))):
        start = time.perf_counter()
        coords = run()
        seconds = time.perf_counter() - start
        assert np.isfinite(coords).all()
        rows.append({"what": "embed", "method": name, "points": args.points, "seconds": seconds})
        print(f"embed {name}: {args.points} points in {seconds:.1f} s (JIT included)", flush=True)
    return rows


def main(argv=None):
    args = parse_args(argv)
    from benchmarks.run import weights_file

    results = {"date": time.strftime("%Y-%m-%d"), "machine": {"cpus": os.cpu_count()},
               "args": {k: str(v) for k, v in vars(args).items()}, "rows": []}
    args.out.mkdir(parents=True, exist_ok=True)

    def write(rows=()):  # after every row, so that a long run stopped early keeps what it measured
        (args.out / "scale.json").write_text(json.dumps(dict(results, rows=results["rows"] + list(rows)), indent=1))

    with tempfile.TemporaryDirectory(prefix="convscope-scale-") as work:
        if "extract" in args.only:
            results["rows"] += bench_extract(args, weights_file(args), Path(work), on_row=write)
    if "neighbours" in args.only:
        results["rows"] += bench_neighbours(args)
        write()
    if "embed" in args.only:
        results["rows"] += bench_embed(args)
    write()
    print(f"wrote {args.out / 'scale.json'}")


if __name__ == "__main__":
    main()
