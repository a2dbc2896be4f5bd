"""Check the built sdist and wheel beyond what ``twine check`` reads.

    python .ci/check_dist.py DIST_FOLDER

Both carry the one version written in ``pytest_memdb/__init__.py`` (hatch reads it from
there), require Python 3.11 or later, link the docs site, and the sdist ships the docs
site's sources (``mkdocs.yml`` and every file of ``docs/`` git tracks), so the site builds
from it. Exits non-zero, naming each problem.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from email.parser import HeaderParser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS_URL = "Documentation, https://pytest-memdb.github.io/pytest-memdb/"


def _version() -> str:
    text = (ROOT / "pytest_memdb" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if match is None:
        raise SystemExit("pytest_memdb/__init__.py has no __version__ line")
    return match.group(1)


def _metadata_problems(kind: str, text: str, version: str) -> list[str]:
    metadata = HeaderParser().parsestr(text)
    problems = []
    if metadata["Version"] != version:
        problems.append(f"{kind}: Version {metadata['Version']!r}, __version__ is {version!r}")
    if metadata["Requires-Python"] != ">=3.11":
        problems.append(f"{kind}: Requires-Python {metadata['Requires-Python']!r}, not '>=3.11'")
    if DOCS_URL not in (metadata.get_all("Project-URL") or []):
        problems.append(f"{kind}: no Project-URL {DOCS_URL!r}")
    return problems


def main(dist: Path) -> int:
    version = _version()
    sdists = sorted(dist.glob("pytest_memdb-*.tar.gz"))
    wheels = sorted(dist.glob("pytest_memdb-*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        print(f"expected one sdist and one wheel in {dist}, found {sdists + wheels}")
        return 1
    sdist, wheel = sdists[0], wheels[0]
    if sdist.name != f"pytest_memdb-{version}.tar.gz" or not wheel.name.startswith(
        f"pytest_memdb-{version}-"
    ):
        print(f"{sdist.name}, {wheel.name}: not version {version} (__version__)")
        return 1
    problems = []
    with tarfile.open(sdist) as archive:
        prefix = f"pytest_memdb-{version}/"
        names = {name.removeprefix(prefix) for name in archive.getnames()}
        member = archive.extractfile(prefix + "PKG-INFO")
        assert member is not None
        problems += _metadata_problems("sdist", member.read().decode(), version)
    tracked = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--", "docs"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    wanted = {"mkdocs.yml"} | {name for name in tracked.split("\0") if name}
    missing = sorted(wanted - names)
    if missing:
        problems.append(f"sdist: the docs site's sources are missing: {missing}")
    with zipfile.ZipFile(wheel) as archive:
        info = f"pytest_memdb-{version}.dist-info/METADATA"
        problems += _metadata_problems("wheel", archive.read(info).decode(), version)
    for problem in problems:
        print(problem)
    if not problems:
        print(
            f"{sdist.name} and {wheel.name}: version {version}, Requires-Python >=3.11, "
            f"the docs link, and {len(wanted)} docs files in the sdist"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    sys.exit(main(Path(sys.argv[1])))
