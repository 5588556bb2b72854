"""engine.resources: where weight files and the class index are found, and the guarded download.

Downloads are tested against a local http.server on 127.0.0.1 only (the URL/size/md5 table is
monkeypatched); nothing here touches the network.
"""

import functools
import hashlib
import http.server
import socket
import sys
import threading

import pytest

from engine import resources
from engine.errors import ConvscopeError
from engine.resources import (
    CLASS_INDEX_FILE,
    NOTOP_FILE,
    TOP_FILE,
    RemoteFile,
    load_class_names,
    resolve_weights,
)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty HOME and no KERAS_HOME / CONVSCOPE_* variables."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("KERAS_HOME", "CONVSCOPE_WEIGHTS", "CONVSCOPE_CLASS_INDEX"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        if not issubclass(sys.exc_info()[0], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)  # a client hanging up early is a test's point


@pytest.fixture
def server(tmp_path):
    """(folder, base URL) of a local HTTP server serving that folder."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    httpd = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"h5")
    return path


def _one_line_error(call, *fragments):
    with pytest.raises(ConvscopeError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---- resolution order -----------------------------------------------------------------------


def test_explicit_path_wins_over_env_and_cache(home, tmp_path, monkeypatch):
    explicit = _touch(tmp_path / "mine.h5")
    monkeypatch.setenv("CONVSCOPE_WEIGHTS", str(_touch(tmp_path / "env.h5")))
    _touch(home / ".keras" / "models" / NOTOP_FILE)
    assert resolve_weights(explicit) == explicit
    assert resolve_weights(str(explicit), need_top=True) == explicit


def test_env_wins_over_cache(home, tmp_path, monkeypatch):
    env = _touch(tmp_path / "env.h5")
    monkeypatch.setenv("CONVSCOPE_WEIGHTS", str(env))
    _touch(home / ".keras" / "models" / NOTOP_FILE)
    assert resolve_weights() == env


def test_missing_explicit_or_env_file(home, tmp_path, monkeypatch):
    _one_line_error(lambda: resolve_weights(tmp_path / "nope.h5"), "nope.h5", "does not exist")
    monkeypatch.setenv("CONVSCOPE_WEIGHTS", str(tmp_path / "gone.h5"))
    _one_line_error(resolve_weights, "CONVSCOPE_WEIGHTS", "gone.h5")


def test_home_cache_prefers_notop_and_falls_back_to_full(home):
    cache = home / ".keras" / "models"
    full = _touch(cache / TOP_FILE)
    assert resolve_weights() == full  # only the full file: it serves the conv layers too
    notop = _touch(cache / NOTOP_FILE)
    assert resolve_weights() == notop
    assert resolve_weights(need_top=True) == full


def test_keras_home_cache(home, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    _touch(home / ".keras" / "models" / NOTOP_FILE)  # ignored: KERAS_HOME moves the cache
    notop = _touch(tmp_path / "kh" / "models" / NOTOP_FILE)
    assert resolve_weights() == notop
    message = _one_line_error(lambda: resolve_weights(need_top=True),
                              TOP_FILE, str(tmp_path / "kh" / "models"))
    assert "--weights" in message and "CONVSCOPE_WEIGHTS" in message


def test_nothing_found_and_download_declined(home):
    prompts = []
    message = _one_line_error(lambda: resolve_weights(download=lambda p: prompts.append(p) or False),
                              NOTOP_FILE, str(home / ".keras" / "models"), "CONVSCOPE_WEIGHTS")
    assert len(prompts) == 1 and NOTOP_FILE in prompts[0] and "58.9 MB" in prompts[0]
    assert "not found" in message
    _one_line_error(resolve_weights, NOTOP_FILE)  # download=None never asks


# ---- downloads ------------------------------------------------------------------------------


def _serve(monkeypatch, server, name, content, md5=None, size=None):
    folder, base = server
    (folder / name).write_bytes(content)
    remote = RemoteFile(base + name, len(content) if size is None else size,
                        md5 or hashlib.md5(content).hexdigest())
    monkeypatch.setitem(resources.REMOTE_FILES, name, remote)
    return remote


def test_download_success(home, server, monkeypatch):
    content = bytes(range(256)) * 5000
    _serve(monkeypatch, server, NOTOP_FILE, content)
    seen = []
    path = resolve_weights(download=True, progress=lambda done, total: seen.append((done, total)))
    cache = home / ".keras" / "models"
    assert path == cache / NOTOP_FILE and path.read_bytes() == content
    assert seen[-1] == (len(content), len(content))
    assert sorted(p.name for p in cache.iterdir()) == [NOTOP_FILE]  # no temporary file left
    assert resolve_weights() == path  # found in the cache next time, no download


def test_download_with_confirmation_for_the_full_file(home, server, monkeypatch):
    _serve(monkeypatch, server, TOP_FILE, b"full model")
    path = resolve_weights(need_top=True, download=lambda prompt: TOP_FILE in prompt)
    assert path.name == TOP_FILE and path.read_bytes() == b"full model"


def test_md5_mismatch_leaves_no_file(home, server, monkeypatch):
    _serve(monkeypatch, server, NOTOP_FILE, b"not the weights", md5="0" * 32)
    _one_line_error(lambda: resolve_weights(download=True), "md5", NOTOP_FILE, "0" * 32)
    cache = home / ".keras" / "models"
    assert list(cache.iterdir()) == []


def test_size_mismatch_leaves_no_file(home, server, monkeypatch):
    _serve(monkeypatch, server, NOTOP_FILE, b"short", size=1000)
    _one_line_error(lambda: resolve_weights(download=True), "5 bytes, expected 1000")
    assert list((home / ".keras" / "models").iterdir()) == []


def test_oversized_download_stops_at_the_expected_size(home, server, monkeypatch):
    """A 20 MB answer for a 3000-byte file: never more than 3000 bytes are counted or written."""
    _serve(monkeypatch, server, NOTOP_FILE, b"x" * (20 << 20), size=3000)
    seen = []
    written = []
    real_fdopen = resources.os.fdopen

    def counting_fdopen(*args, **kwargs):
        handle = real_fdopen(*args, **kwargs)
        write = handle.write
        handle.write = lambda block: written.append(len(block)) or write(block)
        return handle

    monkeypatch.setattr(resources.os, "fdopen", counting_fdopen)
    _one_line_error(lambda: resolve_weights(download=True, progress=lambda d, t: seen.append(d)),
                    "larger than the expected 3000 bytes", NOTOP_FILE)
    assert sum(written) <= 3000 and max(seen, default=0) <= 3000
    assert list((home / ".keras" / "models").iterdir()) == []


def test_http_error(home, server, monkeypatch):
    folder, base = server
    monkeypatch.setitem(resources.REMOTE_FILES, NOTOP_FILE, RemoteFile(base + "missing.h5", 10, "0" * 32))
    _one_line_error(lambda: resolve_weights(download=True), "could not download", "HTTP 404")
    assert list((home / ".keras" / "models").iterdir()) == []


def test_connection_refused(home, monkeypatch):
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/{NOTOP_FILE}"
    monkeypatch.setitem(resources.REMOTE_FILES, NOTOP_FILE, RemoteFile(url, 10, "0" * 32))
    message = _one_line_error(lambda: resolve_weights(download=True),
                              "could not download", NOTOP_FILE, url)
    assert "refused" in message.lower()
    assert "--weights" in message and "CONVSCOPE_WEIGHTS" in message
    assert list((home / ".keras" / "models").iterdir()) == []


# ---- class index ----------------------------------------------------------------------------


def test_class_names_from_the_shared_file(shared_data, home):
    names = load_class_names(shared_data / CLASS_INDEX_FILE)
    assert len(names) == 1000
    assert (names[0], names[65], names[18], names[386]) == ("tench", "sea_snake", "magpie", "African_elephant")


def test_class_names_resolution_order(shared_data, home, tmp_path, monkeypatch):
    assert load_class_names() is None  # nothing anywhere and no download allowed
    assert load_class_names(download=lambda prompt: False) is None
    cache = home / ".keras" / "models"
    cache.mkdir(parents=True)
    (cache / CLASS_INDEX_FILE).write_text('{"0": ["n0", "cached"]}')
    assert load_class_names() == ["cached"]
    (tmp_path / "env.json").write_text('{"0": ["n0", "from_env"], "1": ["n1", "second"]}')
    monkeypatch.setenv("CONVSCOPE_CLASS_INDEX", str(tmp_path / "env.json"))
    assert load_class_names() == ["from_env", "second"]
    assert load_class_names(shared_data / CLASS_INDEX_FILE)[65] == "sea_snake"
    monkeypatch.setenv("CONVSCOPE_CLASS_INDEX", str(tmp_path / "gone.json"))
    _one_line_error(load_class_names, "CONVSCOPE_CLASS_INDEX", "gone.json")


def test_class_index_download(shared_data, home, server, monkeypatch):
    content = (shared_data / CLASS_INDEX_FILE).read_bytes()
    remote = _serve(monkeypatch, server, CLASS_INDEX_FILE, content)
    assert remote.md5 == "c2c37ea517e94d9795004a39431a14cb"  # the real file, as Keras caches it
    names = load_class_names(download=True)
    assert names[65] == "sea_snake"
    assert (home / ".keras" / "models" / CLASS_INDEX_FILE).read_bytes() == content


def test_class_index_download_failure_gives_none(home, server, monkeypatch):
    _serve(monkeypatch, server, CLASS_INDEX_FILE, b'{"0": ["n0", "x"]}', md5="0" * 32)
    assert load_class_names(download=True) is None
    assert list((home / ".keras" / "models").iterdir()) == []
    reports = []
    assert load_class_names(download=True, report=reports.append) is None
    assert len(reports) == 1 and "md5" in reports[0] and CLASS_INDEX_FILE in reports[0]


@pytest.mark.parametrize("text, fragment", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a class index"),
    ('{"0": ["n0", "a"], "2": ["n2", "b"]}', "keys"),
    ('{"0": "tench"}', "entry 0"),
    ('{"0": ["n0", 5]}', "entry 0"),
])
def test_corrupt_class_index(text, fragment, tmp_path):
    path = tmp_path / "index.json"
    path.write_text(text)
    _one_line_error(lambda: load_class_names(path), fragment, "index.json")
