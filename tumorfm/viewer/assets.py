"""NiiVue, the viewer's one script: pinned like a Python dependency, installed by the set-up.

    python -m tumorfm.viewer.assets     (run by `make demo` / `make test` when the file is missing)

`npm pack` fetches the pinned release from the npm registry into a temporary folder; its
single-file UMD bundle is checked against the pinned SHA-256 and written, with NiiVue's BSD-2
licence, into tumorfm/viewer/static (ignored by git). Nothing is fetched at run time: the viewer
serves or embeds this file and refuses to start without it.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tumorfm.errors import TumorFMError

NIIVUE = "@niivue/niivue@0.69.0"
NIIVUE_SHA256 = "47b896b77ec4a5be3ef1949c33ad393b6f45629921f326c279000bcf51bdb4af"
STATIC = Path(__file__).parent / "static"
SCRIPT = STATIC / "niivue.umd.js"
LICENCE = STATIC / "LICENSE.niivue"

# NiiVue's LICENSE file as its repository holds it (the npm package carries only the SPDX id)
NIIVUE_LICENCE = """BSD 2-Clause License

Copyright (c) 2021, Niivue
All rights reserved.

Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this
   list of conditions and the following disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice,
   this list of conditions and the following disclaimer in the documentation
   and/or other materials provided with the distribution.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE
FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""


def script() -> bytes:
    """The installed NiiVue bundle, or a one-line error saying how to install it."""
    if not SCRIPT.is_file():
        raise TumorFMError(
            f"{SCRIPT}: NiiVue is not installed; run `python -m tumorfm.viewer.assets` "
            "(needs npm and the npm registry once)"
        )
    return SCRIPT.read_bytes()


def install() -> Path:
    """Fetch the pinned NiiVue with npm, check its hash, write it and its licence to STATIC."""
    npm = shutil.which("npm")
    if npm is None:
        raise TumorFMError("npm: not found; the viewer's NiiVue bundle is installed with npm")
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [npm, "pack", NIIVUE, "--silent"], cwd=tmp, capture_output=True, text=True
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            last = (done.stderr.strip().splitlines() or ["no package"])[-1]
            raise TumorFMError(f"npm pack {NIIVUE}: failed ({last})")
        with tarfile.open(tarballs[0]) as archive:
            member = archive.extractfile("package/dist/niivue.umd.js")
            data = member.read() if member is not None else b""
    digest = hashlib.sha256(data).hexdigest()
    if digest != NIIVUE_SHA256:
        raise TumorFMError(f"{NIIVUE}: niivue.umd.js has SHA-256 {digest}, pinned {NIIVUE_SHA256}")
    STATIC.mkdir(exist_ok=True)
    partial = SCRIPT.with_suffix(".partial")
    partial.write_bytes(data)
    LICENCE.write_text(NIIVUE_LICENCE)
    partial.replace(SCRIPT)
    return SCRIPT


if __name__ == "__main__":
    try:
        print(f"NiiVue installed: {install()}")
    except TumorFMError as error:
        sys.exit(f"tumorfm: error: {error}")
