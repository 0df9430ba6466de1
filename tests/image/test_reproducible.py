"""Two cold builds of the test recipe from the same mirror state give byte-identical images.

The first build is the session's `node_image`; the second goes to another output folder (builds
are cached by input hash in their output folder, so this one cannot be a cache hit). On a
difference the test names what differs: the partition, and inside it each file (content,
mode, owner, times, link target) or the file system's own fields (nodekiln.images.compare).
"""

from __future__ import annotations

import json
import shutil

import pytest

from nodekiln.images import compare, manifest

from .conftest import build_test_image

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_second_cold_build_is_byte_identical(node_image, test_site, tmp_path_factory):
    if node_image.result is None:
        pytest.skip("NODEKILN_TEST_IMAGE: the image was built elsewhere, there is no recipe to rebuild here")
    out = tmp_path_factory.mktemp("rebuild")
    try:
        second = build_test_image(test_site, out)
        assert not second.cache_hit
        first_sum, second_sum = manifest.sha256_file(node_image.path), manifest.sha256_file(second.image)
        beside = [json.loads(p.read_text()) for p in (node_image.manifest, second.manifest_path)]
        assert beside[0]["inputHash"] == beside[1]["inputHash"]
        # the published tree digest is the same too (and says what it leaves out: nothing today)
        assert beside[0]["treeDigest"] == beside[1]["treeDigest"] and beside[0]["treeDigest"]["excludes"] == []
        assert beside[0]["mirrorState"] == beside[1]["mirrorState"], "the mirror changed between the two builds"
        if first_sum != second_sum:
            result = compare.compare_artifacts(node_image.path, second.image, work=out)
            pytest.fail(f"qcow2 sha256 {first_sum} != {second_sum}\n{result.summary(200)}", pytrace=False)
        assert beside[0]["sourceDateEpoch"] and beside[0]["sourceDateEpoch"] == beside[1]["sourceDateEpoch"]
    finally:
        shutil.rmtree(out, ignore_errors=True)
