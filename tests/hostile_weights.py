"""Hostile Keras h5 weight files, built on demand, for the weight loader's fuzz suite.

Every case starts from a tiny sound Keras 2 model (``TINY_LAYERS``: conv 3x3x3->2, pool, flatten,
dense 32->3 on an 8x8x3 input; 16 KB) and breaks it one way. ``Case.build(folder)`` writes the
file and returns ``(path, arrays)``: ``arrays`` ({layer: (kernel, bias)}, engine layout) when the
file must load to exactly those arrays, None when it must be refused. ``expect`` says which:
"load", "error" (a one-line ``ConvscopeError``) or "either" (byte flips: a flip may land in
bytes nothing reads).

Kinds (``ci_cases()``, a few hundred, deterministic; ``long_cases(n, seed)``, as many as asked):
files that reach outside themselves (external raw storage to /etc/passwd, ``../..`` paths,
/dev/urandom, a FIFO, a sibling file of valid floats; virtual datasets; external links; soft
links, dangling and cyclic), size bombs (gzip datasets declaring 10^9-10^10 values, a config
whose layers declare them consistently, huge attributes), metadata byte flips and truncations of
``fixtures/hostile/tiny_keras2.h5`` (the tiny model as h5py 3.16 / HDF5 2.0 wrote it; flips
known to hang or crash libhdf5 are in ``HANG_FLIPS`` and ``CRASH_FLIPS``), bad model configs,
broken 2016 ``nb_layers`` files, wrong dtypes, non-finite values, and paths that are not files.

``python -m tests.hostile_weights --search N`` re-runs the byte-flip search that found the hangs:
it walks a flipped copy with plain h5py in a forked child and reports flips that take over 3 s.
"""

import json
import os
import pathlib
from dataclasses import dataclass, field
from typing import Callable

import h5py
import numpy as np

from tests.synthetic_layouts import write_keras2_model

TINY_LAYERS = [
    dict(cls="Conv2D", name="conv", filters=2, kernel_size=3, padding="same", activation="relu"),
    dict(cls="MaxPooling2D", name="pool", pool_size=2),
    dict(cls="Flatten", name="flat"),
    dict(cls="Dense", name="out", units=3, activation="softmax"),
]
TINY_INPUT = (8, 8, 3)
KERNEL = {"conv": "model_weights/conv/conv/kernel:0", "out": "model_weights/out/out/kernel:0"}
BIAS = {"conv": "model_weights/conv/conv/bias:0", "out": "model_weights/out/out/bias:0"}
BASE_FILE = pathlib.Path(__file__).parent / "fixtures" / "hostile" / "tiny_keras2.h5"
# (byte offset, xor) of tiny_keras2.h5 that make libhdf5 loop without end (found by --search) ...
HANG_FLIPS = [(3056, 0x80), (3160, 0xFF)]
# ... that make it allocate gigabytes within seconds, and that crash it (SIGSEGV).
GREEDY_FLIPS = [(891, 0xFF), (1043, 0xFF)]
CRASH_FLIPS = [(857, 0xFF), (929, 0xFF)]


@dataclass
class Case:
    name: str
    build: Callable  # folder -> (path, arrays or None)
    expect: str  # "load", "error" or "either"
    fragments: tuple = ()  # words the error must contain
    tags: set = field(default_factory=set)  # "bomb": must be refused with almost no memory


def write_tiny(path, **options):
    """The tiny model; returns its arrays {layer: (kernel, bias)} in the engine's layout."""
    return write_keras2_model(path, TINY_LAYERS, TINY_INPUT, **options)


def _edited(name, edit, expect="error", fragments=(), expected=None, tags=()):
    """A case: the tiny model, then ``edit(f, folder, arrays)`` on it opened r+; a loading case
    expects ``expected(arrays)`` (default: the arrays unchanged)."""

    def build(folder):
        path = folder / f"{name}.h5"
        arrays = write_tiny(path)
        with h5py.File(path, "r+") as f:
            edit(f, folder, arrays)
        if expect != "load":
            return path, None
        return path, expected(arrays) if expected else arrays

    return Case(name, build, expect, tuple(fragments), set(tags))


def _replace(f, path, **create):
    """Put a new dataset at ``path`` (``create_dataset`` keywords), in place of the old one."""
    parent, name = path.rsplit("/", 1)
    del f[path]
    return f[parent].create_dataset(name, **create)


def _fifo(folder):
    path = folder / "fifo"
    if not path.exists():
        os.mkfifo(path)
    return path


def _sibling_floats(folder, count):
    """A file of ``count`` valid float32 values next to the h5: what external storage would load."""
    path = folder / "sibling.bin"
    path.write_bytes(np.linspace(-1, 1, count, dtype=np.float32).tobytes())
    return path


# ---- reaching outside the file ----------------------------------------------------------------


def _outside_cases():
    cases = []
    targets = {
        "etc_passwd": lambda folder: "/etc/passwd",
        "dotdot_passwd": lambda folder: "../../../../../../../../etc/passwd",
        "dev_urandom": lambda folder: "/dev/urandom",
        "fifo": lambda folder: str(_fifo(folder)),
        "sibling": lambda folder: str(_sibling_floats(folder, 1 << 12)),
        "missing": lambda folder: str(folder / "no-such-file.bin"),
    }
    for target_name, target in targets.items():
        for role, where in (("bias", BIAS["conv"]), ("kernel", KERNEL["out"])):
            def storage(f, folder, arrays, where=where, target=target):
                shape = f[where].shape
                _replace(f, where, shape=shape, dtype="f4", external=[(target(folder), 0, h5py.h5f.UNLIMITED)])

            cases.append(_edited(f"external_storage_{target_name}_{role}", storage,
                                 fragments=("stored in another file",)))

            def virtual(f, folder, arrays, where=where, target=target):
                shape = f[where].shape
                layout = h5py.VirtualLayout(shape=shape, dtype="f4")
                layout[...] = h5py.VirtualSource(target(folder), "data", shape=shape)
                parent, name = where.rsplit("/", 1)
                del f[where]
                f[parent].create_virtual_dataset(name, layout, fillvalue=0)

            cases.append(_edited(f"virtual_{target_name}_{role}", virtual, fragments=("virtual dataset",)))

            def link(f, folder, arrays, where=where, target=target):
                del f[where]
                f[where] = h5py.ExternalLink(target(folder), "/data")

            cases.append(_edited(f"external_link_{target_name}_{role}", link, fragments=("external link",)))

    def same_file_virtual(f, folder, arrays):
        shape = f[BIAS["conv"]].shape
        f.create_dataset("copy", data=arrays["conv"][1])
        layout = h5py.VirtualLayout(shape=shape, dtype="f4")
        layout[...] = h5py.VirtualSource(".", "copy", shape=shape)
        del f[BIAS["conv"]]
        f["model_weights/conv/conv"].create_virtual_dataset("bias:0", layout)

    def unrelated_link(f, folder, arrays):
        f["notes"] = h5py.ExternalLink("/etc/passwd", "/x")  # the layers themselves are sound

    def valid_sibling_h5(f, folder, arrays):
        other = folder / "other.h5"
        with h5py.File(other, "w") as g:
            g["b"] = arrays["conv"][1]
        del f[BIAS["conv"]]
        f[BIAS["conv"]] = h5py.ExternalLink(str(other), "/b")

    def group_link(f, folder, arrays):
        del f["model_weights/out"]
        f["model_weights/out"] = h5py.ExternalLink("/etc/passwd", "/out")

    cases += [
        _edited("virtual_same_file", same_file_virtual, fragments=("virtual dataset",)),
        _edited("external_link_unrelated", unrelated_link, fragments=("external link", "notes")),
        _edited("external_link_valid_sibling_h5", valid_sibling_h5, fragments=("external link",)),
        _edited("external_link_layer_group", group_link, fragments=("external link",)),
    ]
    return cases


def _link_cases():
    def soft_dataset(f, folder, arrays):  # the bias stored elsewhere, reached through a soft link
        f.create_dataset("stash/bias", data=arrays["conv"][1])
        del f[BIAS["conv"]]
        f[BIAS["conv"]] = h5py.SoftLink("/stash/bias")

    def soft_group(f, folder, arrays):
        f.move("model_weights/out", "elsewhere")
        f["model_weights/out"] = h5py.SoftLink("/elsewhere")

    def hard_duplicate(f, folder, arrays):
        f["second_name"] = f[KERNEL["conv"]]

    def dangling(f, folder, arrays):
        del f[BIAS["conv"]]
        f[BIAS["conv"]] = h5py.SoftLink("/nowhere")

    def cycle(f, folder, arrays):
        del f[BIAS["conv"]]
        f[BIAS["conv"]] = h5py.SoftLink("/loop_b")
        f["loop_b"] = h5py.SoftLink(BIAS["conv"])

    def hard_cycle(f, folder, arrays):
        f["model_weights/conv/back"] = f["model_weights"]

    return [
        _edited("soft_link_to_dataset", soft_dataset, "load"),
        _edited("soft_link_to_group", soft_group, "load"),
        _edited("hard_link_duplicate", hard_duplicate, "load"),
        _edited("hard_link_cycle", hard_cycle, "load"),
        _edited("soft_link_dangling", dangling, fragments=("soft link",)),
        _edited("soft_link_cycle", cycle, fragments=("soft link",)),
    ]


# ---- size bombs -------------------------------------------------------------------------------


def _bomb_cases():
    def declared(where, shape, chunks, written=False):
        def edit(f, folder, arrays):
            ds = _replace(f, where, shape=shape, dtype="f4", chunks=chunks, compression="gzip")
            if written:
                ds[: chunks[0]] = 1.0  # one chunk stored: the rest is implied
        return edit

    def consistent(units, written):
        """A config whose Dense layer really has ``units`` outputs and a file that declares them."""
        def edit(f, folder, arrays):
            config = json.loads(f.attrs["model_config"])
            config["config"]["layers"][3]["config"]["units"] = units
            f.attrs["model_config"] = json.dumps(config).encode()
            _replace(f, KERNEL["out"], shape=(32, units), dtype="f4", chunks=(32, 1 << 14), compression="gzip")
            ds = _replace(f, BIAS["out"], shape=(units,), dtype="f4", chunks=(1 << 14,), compression="gzip")
            if written:
                ds[: 1 << 14] = 0.5
                f[KERNEL["out"]][:, : 1 << 14] = 0.5
        return edit

    def huge_attribute(f, folder, arrays):
        f.create_group("notes").attrs.create("padding_bytes", np.zeros((17 << 20) // 8, "f8"))

    giga = 10 ** 9
    cases = [
        _edited("bomb_1e9_bias_gzip", declared(BIAS["conv"], (giga,), (1 << 20,)), tags={"bomb"},
                fragments=("bias has shape (1000000000)",)),
        _edited("bomb_1e10_bias_gzip_written", declared(BIAS["conv"], (10 * giga,), (1 << 20,), True),
                tags={"bomb"}, fragments=("expected (2)",)),
        _edited("bomb_1e9_kernel_gzip_written", declared(KERNEL["conv"], (1000, 1000, 1000), (1, 100, 1000), True),
                tags={"bomb"}, fragments=("kernel has shape",)),
        _edited("bomb_consistent_units_unwritten", consistent(1 << 20, False), tags={"bomb"},
                fragments=("no stored data",)),
        _edited("bomb_consistent_units_one_chunk", consistent(1 << 20, True), tags={"bomb"},
                fragments=("compression bomb",)),
    ]
    # Attributes above 64 KiB need the newer object header of a group created with libver="latest".
    def build_attribute(folder):
        path = folder / "bomb_attribute.h5"
        write_tiny(path)
        with h5py.File(path, "r+", libver="latest") as f:
            huge_attribute(f, folder, None)
        return path, None

    # A real 17 MB attribute (not a declared size): libhdf5 reads it whole to open it; refused after.
    cases.append(Case("bomb_attribute_17mb", build_attribute, "error", ("attribute",)))
    return cases


# ---- dtypes, values, structure ----------------------------------------------------------------


def _cast(layer, role, dtype):
    def expected(arrays):
        out = dict(arrays)
        kernel, bias = out[layer]
        if role == "bias":
            bias = bias.astype(dtype).astype(np.float32)
        else:
            kernel = kernel.astype(dtype).astype(np.float32)
        out[layer] = (kernel, bias)
        return out
    return expected


def _value_cases():
    cases = []
    for dtype in ("<f2", ">f4", "<f8", ">f8"):  # floats of any width or byte order load exactly
        def edit(f, folder, arrays, dtype=dtype):
            _replace(f, BIAS["conv"], data=arrays["conv"][1].astype(dtype))
        cases.append(_edited(f"dtype_{dtype.replace('<', 'le_').replace('>', 'be_')}", edit, "load",
                             expected=_cast("conv", "bias", dtype)))
    for storage in ({"compression": "gzip", "shuffle": True, "fletcher32": True, "chunks": (1, 2, 3, 2)},
                    {"compression": "lzf", "chunks": (3, 3, 3, 1)}, {"chunks": (2, 1, 1, 2)}):
        def edit(f, folder, arrays, storage=storage):
            _replace(f, KERNEL["conv"], data=arrays["conv"][0], **storage)
        cases.append(_edited(f"storage_{'_'.join(sorted(storage))}", edit, "load"))
    for dtype in ("i4", "i1", "u1", "?", "S4", "c8"):
        def edit(f, folder, arrays, dtype=dtype):
            _replace(f, BIAS["conv"], data=np.ones(2, dtype))
        cases.append(_edited(f"dtype_{dtype.replace('?', 'bool')}", edit, fragments=("dtype",)))

    def compound(f, folder, arrays):
        _replace(f, BIAS["conv"], data=np.zeros(2, [("a", "f4"), ("b", "i4")]))

    def vlen_text(f, folder, arrays):
        _replace(f, BIAS["conv"], data=np.array(["a", "b"], dtype=h5py.string_dtype()))

    cases += [_edited("dtype_compound", compound, fragments=("dtype",)),
              _edited("dtype_vlen_string", vlen_text, fragments=("dtype",))]
    for label, value, dtype in (("nan", np.nan, "f4"), ("inf", np.inf, "f4"), ("minus_inf", -np.inf, "f4"),
                                ("f64_1e300", 1e300, "f8"), ("f64_3_5e38", 3.5e38, "f8"),
                                ("f64_minus_1e39", -1e39, "f8"), ("f16_inf", np.inf, "f2")):
        for layer, role, where in (("conv", "bias", BIAS["conv"]), ("out", "kernel", KERNEL["out"])):
            def edit(f, folder, arrays, value=value, dtype=dtype, where=where):
                data = f[where][()].astype(dtype)
                data.flat[1] = value
                _replace(f, where, data=data)
            cases.append(_edited(f"value_{label}_{layer}_{role}", edit, fragments=("NaN or infinite",)))

    def underflow(f, folder, arrays):  # 1e-50 is 0 in float32: finite, loads
        _replace(f, BIAS["conv"], data=np.array([1e-50, -1e-50]))

    cases.append(_edited("value_f64_underflow", underflow, "load",
                         expected=lambda a: {**a, "conv": (a["conv"][0], np.zeros(2, np.float32))}))
    return cases + _structure_cases()


def _structure_cases():
    def put(where, **create):
        return lambda f, folder, arrays: _replace(f, where, **create)

    def group_for_dataset(f, folder, arrays):
        del f[BIAS["conv"]]
        f.create_group(BIAS["conv"])

    def dataset_for_group(f, folder, arrays):
        del f["model_weights/out"]
        f["model_weights/out"] = np.zeros(3, "f4")

    def weight_names(value):
        def edit(f, folder, arrays):
            f["model_weights/conv"].attrs["weight_names"] = value
        return edit

    def unknown_filter(f, folder, arrays):
        _replace(f, BIAS["conv"], data=arrays["conv"][1], chunks=(2,), compression=32001,
                 allow_unknown_filter=True)

    def compact(f, folder, arrays):
        parent, name = BIAS["conv"].rsplit("/", 1)
        del f[BIAS["conv"]]
        plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        plist.set_layout(h5py.h5d.COMPACT)
        ds = h5py.h5d.create(f[parent].id, name.encode(), h5py.h5t.IEEE_F32LE, h5py.h5s.create_simple((2,)),
                             dcpl=plist)
        ds.write(h5py.h5s.ALL, h5py.h5s.ALL, arrays["conv"][1])

    def layer_names(value):
        def edit(f, folder, arrays):
            f["model_weights"].attrs["layer_names"] = value
        return edit

    return [
        _edited("empty_dataspace_bias", put(BIAS["conv"], data=h5py.Empty("f4")), fragments=("empty",)),
        _edited("scalar_bias", put(BIAS["conv"], data=np.float32(1)), fragments=("shape ()",)),
        _edited("unwritten_bias", put(BIAS["conv"], shape=(2,), dtype="f4"), fragments=("no stored data",)),
        _edited("group_instead_of_dataset", group_for_dataset, fragments=("not a dataset",)),
        _edited("dataset_instead_of_group", dataset_for_group, fragments=("weight arrays",)),
        _edited("weight_names_numeric", weight_names(np.array([1.5, 2.5])), fragments=("missing",)),
        _edited("weight_names_empty_string", weight_names(np.array([b"", b""])), fragments=("missing",)),
        _edited("weight_names_absolute", weight_names(np.array([b"/model_weights/out/out/kernel:0",
                                                                b"/model_weights/out/out/bias:0"])),
                fragments=("kernel has shape",)),
        _edited("weight_names_three", weight_names(np.array([b"a", b"b", b"c"])), fragments=("3 weight arrays",)),
        _edited("weight_names_non_utf8", weight_names(np.array([b"\xff\xfe", b"\x80"])), fragments=("missing",)),
        _edited("layer_names_non_utf8", layer_names(np.array([b"\xff"])), fragments=("no weights",)),
        _edited("layer_names_empty", layer_names(h5py.Empty("S1")), fragments=("no weights",)),
        _edited("filter_plugin", unknown_filter, fragments=("filter 32001",)),
        _edited("compact_layout_bias", compact, "load"),
    ]
