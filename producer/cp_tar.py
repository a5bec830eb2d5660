"""``dockrq cp ID:CONTAINER_PATH -``: one collected path as a tar stream, like ``docker cp CONTAINER:PATH -``.

``docker cp`` names the entries of that stream after the path's last component
(``/work/out`` gives ``out``, ``out/result.csv``...). The output archive names them by
their whole container path (``work/out/...``), so the entries under the path are
re-headed on the way through (``tarfile`` stream mode in and out: memory is one
chunk, whatever the size). ``/`` is the archive as stored.
"""

from __future__ import annotations

import posixpath
import tarfile
from typing import BinaryIO

from schemas import entry_name

from .extract import ArchiveRefused

COPY_BUFFER = 256 * 1024


def write_path_tar(source: BinaryIO, out: BinaryIO, container_path: str) -> int:
    """Write to ``out`` a tar of the entries of the archive ``source`` at or below
    ``container_path``, renamed as ``docker cp`` names them; returns how many.

    Hard links to an entry under the path are renamed along. Raises ArchiveRefused
    when ``source`` is damaged.
    """
    prefix = entry_name(container_path)
    top = posixpath.basename(container_path)

    def rebased(name: str) -> str | None:
        name = name.rstrip("/")
        if name == prefix:
            return top
        if name.startswith(prefix + "/"):
            return top + name[len(prefix):]
        return None

    written = 0
    try:
        with tarfile.open(fileobj=source, mode="r|") as tar, tarfile.open(
            fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, copybufsize=COPY_BUFFER
        ) as copy:
            for member in tar:
                name = rebased(member.name)
                if name is None:
                    continue
                member.name = name
                # tarfile writes a pax header's path/linkpath over name/linkname: drop the old ones
                member.pax_headers = {k: v for k, v in member.pax_headers.items() if k not in ("path", "linkpath")}
                if member.islnk():
                    linked = rebased(member.linkname)
                    if linked is None:
                        continue  # its data is not in this stream
                    member.linkname = linked
                copy.addfile(member, tar.extractfile(member) if member.isreg() else None)
                written += 1
    except (tarfile.TarError, EOFError) as exc:
        raise ArchiveRefused(f"the archive is damaged: {exc}") from None
    return written
