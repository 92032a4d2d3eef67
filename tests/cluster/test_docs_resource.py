"""The resource the docs tell a user to create is the one the lab and the tests create, and
docs/ocf-agent.md's cibadmin XML creates exactly what its pcs line creates (offline, on CIB
files: pcs -f and CIB_file need no running cluster)."""

from __future__ import annotations

import os
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hafloatd.lab.cluster import ResourceSpec
from hafloatd.lab.cluster.procs import run

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(shutil.which("pcs") is None and os.environ.get("CI") != "true",
                       reason="pcs is not installed (scripts/setup.sh installs it)"),
]  # fmt: skip
DOCS = Path(__file__).resolve().parents[2] / "docs"


def documented_pcs_lines(page: str) -> list[str]:
    """Every ``pcs resource create`` command of a page, continuation lines joined."""
    text = (DOCS / page).read_text().replace("\\\n", " ")
    return [" ".join(m.split()) for m in re.findall(r"pcs resource create [^\n]*", text)]


@pytest.mark.parametrize("page", ["operations.md", "ocf-agent.md"])
def test_the_documented_pcs_line_is_the_one_the_lab_runs(page: str) -> None:
    assert documented_pcs_lines(page) == [ResourceSpec().pcs_line()]


def documented_cibadmin_xml() -> str:
    text = (DOCS / "ocf-agent.md").read_text()
    found = re.search(r"cibadmin -C -o resources --xml-text '(.*?)'", text, re.S)
    assert found, "docs/ocf-agent.md has no cibadmin -C command"
    return found.group(1)


def canonical_resources(cib: Path) -> str:
    root = ET.parse(cib).getroot()
    resources = root.find("configuration/resources")
    assert resources is not None
    return ET.canonicalize(ET.tostring(resources), strip_text=True)


async def test_the_documented_cibadmin_xml_creates_what_the_pcs_line_creates(
    tmp_path: Path,
) -> None:
    empty = (await run(["cibadmin", "--empty"])).stdout
    by_pcs, by_cibadmin = tmp_path / "pcs.xml", tmp_path / "cibadmin.xml"
    by_pcs.write_text(empty)
    by_cibadmin.write_text(empty)
    await run(["pcs", "-f", str(by_pcs), *ResourceSpec().pcs_args()], timeout=60)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CIB_file": str(by_cibadmin)}
    await run(["cibadmin", "-C", "-o", "resources", "--xml-text", documented_cibadmin_xml()],
              env=env)  # fmt: skip
    assert canonical_resources(by_cibadmin) == canonical_resources(by_pcs)
    assert 'name="failure-timeout" value="120s"' in by_cibadmin.read_text()
