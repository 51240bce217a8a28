"""Names: the one place that turns a source's name into an output name, and that judges source names.

Every file we write for a source is named here, so a hostile or odd source name (a newline, a backslash, `..`,
300 bytes of kanji) can never become a bad file name, and the same source gets the same name on every run:
- apply's outputs mirror the source: `mirror_relpath` (`2019/photo.jpg` -> `2019/photo.png`), with a stable
  suffix only where two sources would collide (tasks/inference/plan.py decides which);
- crappify's pairs (internal training files) are `output_stem` names: `photo.jpg` -> `photo-<sha10>`, the hash
  of the content, so two sources that clean to the same readable part (`a<LF>b.png` and `a<TAB>b.png`, or two
  long names that share their first 228 bytes) stay apart.

Only what is unsafe is replaced (by `_`), and only what is too long is cut.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import unicodedata

from pixelmill.tasks.core.errors import ConfigError

# Bytes in one path component on ext4, XFS, btrfs and ZFS (APFS and NTFS allow 255 characters: more).
NAME_MAX = 255
HASH_CHARS = 10
# Room kept for an extension (".png", ".jpg", ".webp", ".tiff"): a stem within the bound never makes a
# file name over NAME_MAX. Writes use a fixed-length temporary name (storage.write_bytes), so no room
# is needed for one.
EXTENSION_ROOM = 16
STEM_MAX_BYTES = NAME_MAX - EXTENSION_ROOM

# Characters that don't show: controls, bidi and zero-width marks, lone surrogates (undecodable bytes
# in a local file name), line and paragraph separators. In an output name they would hide or fake text.
_INVISIBLE = {"Cc", "Cf", "Cs", "Zl", "Zp"}
_SEPARATORS = re.compile(r"[/\\]")
_HEX = re.compile(rf"[0-9a-f]{{{HASH_CHARS},}}")
_EXTENSION = re.compile(rf"[A-Za-z0-9]{{1,{EXTENSION_ROOM - 1}}}")


def unsafe_reason(name: str) -> str | None:
    """Why a source name (archive member, object key, path under the listed root) is unsafe, or None.

    Unsafe names become `unsafe_name` error rows: never read, never the origin of an output.
    - absolute or with a `..` component: a path that points outside where it was found;
    - control characters (newline, tab, NUL, DEL, C1): they forge lines in logs, listings and CSV exports
      of the catalog, and no camera or scanner writes them;
    - undecodable bytes (lone surrogates from a local file name): no Parquet or JSON can hold the name.
    A backslash is not a reason: the zip format, POSIX and S3 use `/` only, so `dir\\..\\a.png` is one
    legal name that reads back exactly, and zips made on Windows use `\\` in ordinary names. Nothing
    treats a source name as a path here: outputs are named by `output_stem`, which replaces backslashes.
    """
    if not name:
        return "empty name"
    if name.startswith("/"):
        return "absolute path"
    if ".." in name.split("/"):
        return "'..' component"
    for char in name:
        category = unicodedata.category(char)
        if category == "Cc":
            return f"control character U+{ord(char):04X}"
        if category == "Cs":
            return "undecodable bytes in the name"
    return None


def storable(text: str) -> str:
    """`text` as valid UTF-8 for the catalog: undecodable bytes (lone surrogates) spelled as `\\xff`."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _clean(text: str) -> str:
    """NFC, invisible characters and separators as `_`, leading dots as `_` (no hidden files, no `..`)."""
    text = unicodedata.normalize("NFC", text)
    text = "".join("_" if char in "/\\" or unicodedata.category(char) in _INVISIBLE else char for char in text)
    shown = text.lstrip(".")
    return "_" * (len(text) - len(shown)) + shown


def _truncate(text: str, max_bytes: int) -> str:
    """The longest prefix of `text` within max_bytes of UTF-8, never cutting a character in two."""
    data = text.encode("utf-8")
    return text if len(data) <= max_bytes else data[:max_bytes].decode("utf-8", "ignore")


def output_stem(source_name: str, content_hash: str, max_bytes: int = STEM_MAX_BYTES) -> str:
    """`{readable}-{hash10}` for the source's base name: safe as one file name, at most max_bytes of UTF-8.

    `source_name` may be a path or URL path (its last `/` or `\\` part is used, extension dropped);
    `content_hash` is a hex digest of what the output is made from (the image's sha256).
    """
    if not _HEX.fullmatch(content_hash):
        raise ValueError(f"content hash must be at least {HASH_CHARS} lowercase hex digits, not {content_hash!r}")
    if max_bytes < HASH_CHARS + 2:
        raise ValueError(f"max_bytes {max_bytes} leaves no room for a name")
    stem = posixpath.splitext(_SEPARATORS.split(source_name)[-1])[0]
    readable = _truncate(_clean(stem), max_bytes - HASH_CHARS - 1)
    return f"{readable}-{content_hash[:HASH_CHARS]}" if readable else content_hash[:HASH_CHARS]


def output_relpath(source_rel: str, content_hash: str, extension: str, max_bytes: int = STEM_MAX_BYTES) -> str:
    """A safe relative output path mirroring a source's relative path: `2019/a b.jpg` -> `2019/a b-<sha10>.png`.

    Each folder is cleaned like a stem and cut to NAME_MAX bytes; `/` and `\\` both separate folders
    (a Windows zip's `photos\\2019\\a.jpg` mirrors as `photos/2019/`); empty and `.` parts are dropped and
    `..` becomes `__`, so the result always stays under the output prefix it is joined to. Folders that
    clean to the same name merge; the files in them stay apart by their hash (see the module docstring).
    """
    if not _EXTENSION.fullmatch(extension.lstrip(".")):
        raise ValueError(f"extension {extension!r} must be 1-{EXTENSION_ROOM - 1} letters or digits")
    folders = [_truncate(_clean(part), NAME_MAX) for part in _SEPARATORS.split(source_rel)[:-1]
               if part not in ("", ".")]
    name = f"{output_stem(source_rel, content_hash, max_bytes)}.{extension.lstrip('.')}"
    return posixpath.join(*folders, name)


def mirror_relpath(source_rel: str, extension: str, suffix_key: str | None = None) -> str:
    """The output path that mirrors a source's relative path: `2019/photo.jpg` -> `2019/photo.png`.

    Cleaned like `output_relpath` (the same folders, the readable stem; only what is unsafe is replaced), with no
    hash: a person matches an output to its original by name. `suffix_key` (when two inputs would otherwise get
    one name) adds `-<hash10 of the key>`: give the source's relative name, so the suffix never changes when the
    file is edited and the new output replaces the old one.
    """
    if not _EXTENSION.fullmatch(extension.lstrip(".")):
        raise ValueError(f"extension {extension!r} must be 1-{EXTENSION_ROOM - 1} letters or digits")
    folders = [_truncate(_clean(part), NAME_MAX) for part in _SEPARATORS.split(source_rel)[:-1]
               if part not in ("", ".")]
    stem = posixpath.splitext(_SEPARATORS.split(source_rel)[-1])[0]
    if suffix_key is None:
        readable = _truncate(_clean(stem), STEM_MAX_BYTES)
        name = readable or "_"
    else:
        digest = hashlib.sha256(suffix_key.encode("utf-8", "surrogateescape")).hexdigest()
        name = output_stem(source_rel, digest)
    return posixpath.join(*folders, f"{name}.{extension.lstrip('.')}")


def collision_key(relpath: str) -> str:
    """Output paths that are one file somewhere: S3 and ext4 tell `A.png` from `a.png`, but the Windows and macOS
    disks an archive is often copied to do not, so names that differ only in case count as a collision."""
    return unicodedata.normalize("NFC", relpath).casefold()


_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_name(name: str, what: str = "name") -> str:
    """Group and shard names become folder and file names on every store: keep them plain."""
    if not _PLAIN_NAME.match(name or ""):
        raise ConfigError(f"invalid {what} {name!r}",
                          "use letters, digits, '.', '_' and '-' (start with a letter or digit)")
    return name
