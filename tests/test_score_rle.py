"""Mask RLE (COCO uncompressed, column-major; compressed read through pycocotools) and the results file (torn
lines, shards, merge)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as mask_utils

from evalmuse_models.scoring import (
    ResultsWriter,
    mask_to_rle,
    merge_results,
    read_results,
    rle_area,
    rle_to_mask,
)
from evalmuse_models.scoring.results import done_ids, shard_path
from evalmuse_models.scoring.rle import coco_rle
from evalmuse_models.utils import UserInputError

# pycocotools 2.0.x under NumPy 2 warns about its own __array__ on every decode (scoring.rle.decode_rle silences it)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_rle_known_values_are_column_major_and_start_with_zeros():
    mask = np.array([[0, 1, 1], [0, 0, 1]], dtype=np.uint8)
    # column-major: (0,0)=0 (1,0)=0 | (0,1)=1 (1,1)=0 | (0,2)=1 (1,2)=1
    assert mask_to_rle(mask) == {"size": [2, 3], "counts": [2, 1, 1, 2]}
    assert mask_to_rle(np.ones((2, 2)))["counts"] == [0, 4]
    assert mask_to_rle(np.zeros((3, 1)))["counts"] == [3]
    assert rle_area({"size": [2, 3], "counts": [2, 1, 1, 2]}) == 3


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 3)))
def test_rle_round_trip(mask):
    rle = mask_to_rle(mask)
    assert sum(rle["counts"]) == mask.size
    assert json.loads(json.dumps(rle)) == rle
    np.testing.assert_array_equal(rle_to_mask(rle), (mask != 0).astype(np.uint8))
    assert rle_area(rle) == int((mask != 0).sum())
    # what pycocotools reads as an uncompressed RLE, and its compressed form decodes the same
    height, width = mask.shape
    np.testing.assert_array_equal(mask_utils.decode(mask_utils.frPyObjects(rle, height, width)), mask != 0)
    compressed = mask_utils.encode(np.asfortranarray((mask != 0).astype(np.uint8)))
    as_text = {"size": compressed["size"], "counts": compressed["counts"].decode("ascii")}
    np.testing.assert_array_equal(rle_to_mask(as_text), mask != 0)
    assert rle_area(as_text) == int((mask != 0).sum())


def test_rle_rejects_bad_input():
    with pytest.raises(UserInputError, match="counts sum to 3"):
        rle_to_mask({"size": [2, 2], "counts": [1, 2]})
    with pytest.raises(UserInputError, match="invalid RLE"):
        rle_to_mask({"counts": [1]})
    with pytest.raises(UserInputError, match="'counts' must be a string or a list of integers >= 0"):
        rle_to_mask({"size": [2, 2], "counts": [1, -1, 4]})
    with pytest.raises(ValueError, match="2-D"):
        mask_to_rle(np.zeros((2, 2, 2)))
    mask = np.zeros((6, 7), np.uint8)
    mask[1:4, 2:6] = 1
    counts = mask_utils.encode(np.asfortranarray(mask))["counts"].decode("ascii")
    # pycocotools would decode these (leaving pixels unset, or reading past the runs): they are refused
    for bad in (counts[:-2], "", "~~~~"):
        with pytest.raises(UserInputError, match="invalid RLE mask"):
            rle_to_mask({"size": [6, 7], "counts": bad})
    with pytest.raises(UserInputError, match="does not encode a 7x7 mask"):
        rle_to_mask({"size": [7, 7], "counts": counts})
    with pytest.raises(UserInputError, match="the mask is 6x7 .* but the image is 7x6"):
        coco_rle({"size": [6, 7], "counts": counts}, 7, 6)


def test_polygons_are_drawn_by_pycocotools_at_the_given_size():
    rle = coco_rle([[1, 1, 4, 1, 4, 3, 1, 3], [0, 3, 2, 3, 2, 4, 0, 4]], 4, 5)  # two parts, united
    expected = np.zeros((4, 5), np.uint8)
    expected[1:3, 1:4] = 1  # pixel centres inside: x in [1, 4), y in [1, 3)
    expected[3:4, 0:2] = 1
    np.testing.assert_array_equal(rle_to_mask(rle), expected)
    with pytest.raises(UserInputError, match="polygons need the image's size"):
        coco_rle([[1, 1, 4, 1, 4, 3]])
    with pytest.raises(UserInputError, match="invalid polygon"):
        coco_rle([[1, 1, 4, 1, 4]], 4, 5)
    with pytest.raises(UserInputError, match="invalid segmentation"):
        coco_rle([], 4, 5)


def test_reader_drops_only_a_torn_last_line(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultsWriter(path) as writer:
        assert writer.write([{"id": "a"}, {"id": "b"}]) == 2
    with open(path, "ab") as handle:
        handle.write(b'{"id": "c", "sta')
    assert [r["id"] for r in read_results(path)] == ["a", "b"]
    with ResultsWriter(path) as writer:  # reopening repairs the tail
        assert writer.repaired_bytes == len(b'{"id": "c", "sta')
        writer.write([{"id": "c"}])
    assert [r["id"] for r in read_results(path)] == ["a", "b", "c"]
    path.write_bytes(b'{"id": "a"}\n{broken\n{"id": "c"}\n')
    with pytest.raises(UserInputError, match="line 2"):
        read_results(path)
    with pytest.raises(UserInputError, match="does not exist"):
        read_results(tmp_path / "missing.jsonl")


def test_complete_json_without_newline_counts_as_torn(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}')
    assert [r["id"] for r in read_results(path)] == ["a"]


def test_merge_deduplicates_orders_and_removes_shards(tmp_path):
    out = tmp_path / "out.jsonl"
    with ResultsWriter(out) as writer:
        writer.write([{"id": "b", "v": 0}])
    for rank, rows in enumerate([[{"id": "d", "v": 1}, {"id": "b", "v": 9}], [{"id": "a", "v": 2}, {"id": "c", "v": 3}]]):
        with ResultsWriter(shard_path(out, rank)) as writer:
            writer.write(rows)
    assert done_ids(out) == {"a", "b", "c", "d"}
    assert merge_results(out, order=["a", "b", "c", "d"]) == 4
    assert [(r["id"], r["v"]) for r in read_results(out)] == [("a", 2), ("b", 0), ("c", 3), ("d", 1)]
    assert not shard_path(out, 0).parent.exists()
