"""Triton's classification extension: the top classes of an output as "value:index[:label]" strings, per
batch row (the differential tier checks the same against real Triton)."""

from __future__ import annotations

import numpy as np
import pytest

from cluster.protocol.classification import class_count, classify
from cluster.protocol.codec import decode_infer_request
from deployments.errors import InferenceError


def test_top_classes_per_row_largest_first_with_labels_where_there_are_some():
    scores = np.array([[0.5, 2.25, -1.0], [3.0, 9.0, 8.0]], np.float32)
    got = classify("S", scores, 2, batched=True, labels=["cat", "dog"])
    assert got.tolist() == [[b"2.250000:1:dog", b"0.500000:0:cat"], [b"9.000000:1:dog", b"8.000000:2"]]


def test_integers_unbatched_and_more_classes_asked_than_there_are():
    got = classify("R", np.array([3, 7, 5], np.int32), 5, batched=False, labels=None)
    assert got.tolist() == [b"7:1", b"5:2", b"3:0"]


def test_a_bytes_output_cannot_be_classified():
    with pytest.raises(InferenceError, match="numeric output"):
        classify("T", np.array([b"a"], object), 1, batched=False, labels=None)


@pytest.mark.parametrize("count", [0, -1, 1.5, "2", True])
def test_a_class_count_that_is_not_a_positive_integer_is_refused(count):
    with pytest.raises(InferenceError, match="positive integer"):
        class_count("S", {"classification": count})


def test_the_http_codec_reads_the_classification_parameter():
    body = (b'{"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [1]}], '
            b'"outputs": [{"name": "S", "parameters": {"classification": 3}}, {"name": "R"}]}')
    request = decode_infer_request(body)
    assert request.classifications == {"S": 3} and request.outputs == ["S", "R"]
