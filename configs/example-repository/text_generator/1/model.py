"""Generates text token by token, one response per token: a decoupled model in Triton's form, unchanged.

A toy language model in numpy: a fixed vocabulary and a seeded random walk over a bigram table, so the
same prompt always gives the same text. Nothing is downloaded.
"""

import zlib

import numpy as np
import triton_python_backend_utils as pb_utils

VOCABULARY = np.array("the a ray cluster serves models on every node and scales them out with batches of "
                      "requests while replicas stream tokens to clients .".split())


class TritonPythonModel:
    def initialize(self, args):
        rng = np.random.default_rng(0)
        weights = rng.random((len(VOCABULARY), len(VOCABULARY))) ** 4
        self.bigrams = weights / weights.sum(axis=1, keepdims=True)

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            prompt = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()[0]
            limit = pb_utils.get_input_tensor_by_name(request, "MAX_TOKENS")
            count = int(limit.as_numpy()[0]) if limit is not None else 8
            rng = np.random.default_rng(zlib.crc32(prompt))
            word = rng.integers(len(VOCABULARY))
            for _ in range(count):
                word = rng.choice(len(VOCABULARY), p=self.bigrams[word])
                token = np.array([VOCABULARY[word].encode()], dtype=object)
                sender.send(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("TOKEN", token)]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
