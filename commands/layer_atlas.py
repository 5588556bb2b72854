"""``filters --all``: every channel of a layer as one atlas PNG plus an HTML page, resumable.

Finished channels are kept beside the atlas in ``<atlas stem>.tiles/<key>/channel_NNNN.npz``
(the uint8 picture, the raw float32 network input and the loss), each written atomically as its
batch finishes; ``key`` hashes every setting that changes a picture (weights file, device, layer,
and the ``visualize_filters`` options). A rerun with the same settings skips the channels found
there, so an interrupted run resumes where it stopped, and gives the same bytes (a channel's
picture depends on its own seed only, not on its batch). The atlas (channel i at row i // columns,
columns = ceil(sqrt(channels))) and the page are written at the end.
"""

import base64
import hashlib
import html
import io
import json
import math
from pathlib import Path

import numpy as np

from commands.outputs import check_output, save_image, write_output, write_text


def settings_key(weights, device, layer, options) -> str:
    """A short hash of everything that changes a channel's picture."""
    plain = {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v) for k, v in options.items()}
    settings = {"weights": str(weights), "device": str(device), "layer": layer, **plain}
    text = json.dumps(settings, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tile_path(folder: Path, channel: int) -> Path:
    return folder / f"channel_{channel:04d}.npz"


def save_tile(folder: Path, channel: int, image, raw, loss) -> None:
    def write(file):
        np.savez(file, image=image, raw=raw, loss=np.float32(loss))

    write_output(tile_path(folder, channel), write, overwrite=True)


def check_atlas_outputs(out: Path, overwrite: bool):
    """The atlas and its page, checked before any computation; returns (atlas, page)."""
    page = out.with_suffix(".html")
    return check_output(out, overwrite, suffixes={".png"}), check_output(page, overwrite, suffixes=None)


def layer_atlas(model, layer, out, weights, device, options, batch, overwrite, update, key_options=None):
    """Run the missing channels of ``layer`` in batches, then write the atlas and the page.

    ``options``: ``visualize_filters`` keyword arguments (everything but layer, filters and batch);
    ``key_options``: the same as plain values for the settings key (default ``options``);
    ``update(done, total)`` reports channels. Returns (atlas picture, channels, reused count)."""
    from engine.viz.filters import visualize_filters
    from engine.viz.pictures import stitch_grid

    atlas_path, page_path = check_atlas_outputs(out, overwrite)
    channels = model.output_shapes((options["size"],) * 2, upto=model.layer_index(layer))[-1][-1]
    key = settings_key(weights, device, layer, options if key_options is None else key_options)
    folder = out.parent / f"{out.stem}.tiles" / key
    folder.mkdir(parents=True, exist_ok=True)
    todo = [c for c in range(channels) if not tile_path(folder, c).exists()]
    reused = channels - len(todo)
    update(reused, channels)
    for start in range(0, len(todo), batch):
        part = todo[start : start + batch]
        result = visualize_filters(model, layer, filters=part, batch=batch, callback=None, **options)
        for c, image, raw, loss in zip(part, result.images, result.raw, result.losses):
            save_tile(folder, c, image, raw, loss)
        update(reused + start + len(part), channels)
    tiles = [np.load(tile_path(folder, c)) for c in range(channels)]
    images = np.stack([t["image"] for t in tiles])
    losses = [float(t["loss"]) for t in tiles]
    picture = stitch_grid(images, columns=math.ceil(math.sqrt(channels)), margin=2)
    save_image(atlas_path, picture, overwrite)
    write_text(page_path, _page(layer, atlas_path.name, images, losses), overwrite)
    return picture, channels, reused


def _png_data(image) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _page(layer, atlas_name, images, losses) -> str:
    """A self-contained page: every channel's picture with its number and loss, then the atlas."""
    cells = "\n".join(
        f'<figure><img src="data:image/png;base64,{_png_data(image)}" alt="channel {c}">'
        f"<figcaption>{c}: {loss:.4g}</figcaption></figure>"
        for c, (image, loss) in enumerate(zip(images, losses))
    )
    title = html.escape(f"{layer}: {len(images)} channels")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif}} figure{{display:inline-block;margin:4px;text-align:center}}
img{{image-rendering:pixelated;width:128px}} figcaption{{font-size:12px}}</style></head>
<body><h1>{title}</h1><p>Each picture maximises one channel; the number after it is its loss.
The whole layer as one picture: <a href="{html.escape(atlas_name)}">{html.escape(atlas_name)}</a>.</p>
{cells}
</body></html>
"""
