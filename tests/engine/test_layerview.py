"""engine.layerview: the merged view of layers, as overlayfs shows it, read safely."""

from __future__ import annotations

import io
import os
import stat
import tarfile

from engine.export import export_tar
from engine.layerview import LayerView

from .conftest import needs_root

pytestmark = needs_root  # whiteouts are device nodes; opaque marks are trusted.* xattrs


def _file(root: str, rel: str, text: str = "x") -> None:
    os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
    with open(os.path.join(root, rel), "w") as f:
        f.write(text)


def test_what_covers_a_path_hides_it_in_the_layers_below(tmp) -> None:
    top, bottom = f"{tmp}/top", f"{tmp}/bottom"
    _file(top, "file-over-dir")  # a file hides the directory below
    _file(bottom, "file-over-dir/child")
    _file(top, "opaque/new")
    os.setxattr(f"{top}/opaque", "trusted.overlay.opaque", b"y")
    _file(bottom, "opaque/old")
    os.mknod(f"{top}/deleted", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    _file(bottom, "deleted/f")
    _file(bottom, "plain/kept")
    _file(top, "plain/added")
    view = LayerView([top, bottom])
    assert view.names("") == ["file-over-dir", "opaque", "plain"]
    assert stat.S_ISREG(view.lstat("file-over-dir").st_mode)  # type: ignore[union-attr]
    assert not view.has("file-over-dir/child")
    assert view.names("opaque") == ["new"] and not view.has("opaque/old")
    assert not view.has("deleted") and not view.has("deleted/f")
    assert view.names("plain") == ["added", "kept"]


def test_a_symlink_in_a_layer_never_leads_to_the_host(tmp) -> None:
    host = f"{tmp}/host-side"
    _file(host, "secret", "host data")
    top, bottom = f"{tmp}/top", f"{tmp}/bottom"
    os.makedirs(bottom)
    os.symlink(host, f"{bottom}/a")  # absolute: through it, the host's own files
    _file(top, "a/x")  # a real directory over it
    os.makedirs(f"{bottom}/b")
    os.symlink(host, f"{bottom}/b/link")
    view = LayerView([top, bottom])
    assert view.names("a") == ["x"]
    assert not view.has("a/secret") and view.locate("a/secret") is None
    assert not view.has("b/link/secret")
    out = io.BytesIO()
    export_tar([top, bottom], out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as t:
        names = t.getnames()
        assert "a/x" in names and not any("secret" in n for n in names)
        assert t.getmember("b/link").issym()  # the link itself travels, not what it names

