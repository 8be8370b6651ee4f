"""Upper-cases each text and counts its bytes: a Triton Python-backend model, unchanged."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.model_name = args["model_name"]

    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            upper = np.vectorize(bytes.upper, otypes=[object])(text)
            length = np.vectorize(len, otypes=[np.int64])(text)
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("UPPER", upper), pb_utils.Tensor("LENGTH", length)]
            ))
        return responses

    def finalize(self):
        pass
