"""One error type for the whole request path, with a transport-neutral code.

Each transport maps the code with one table (HTTP status and gRPC status, side by side here), so REST and
gRPC never give the same failure different meanings.
"""

from __future__ import annotations

import enum
import re


class ErrorCode(str, enum.Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    TOO_LARGE = "TOO_LARGE"
    TIMEOUT = "TIMEOUT"  # the client took too long to send its request
    RESTRICTED = "RESTRICTED"
    INTERNAL = "INTERNAL"
    # The rest of Triton's codes, which a Python model's TritonError may carry.
    UNIMPLEMENTED = "UNIMPLEMENTED"
    UNKNOWN = "UNKNOWN"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    CANCELLED = "CANCELLED"


HTTP_STATUS = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.TIMEOUT: 408,
    ErrorCode.RESTRICTED: 403,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UNIMPLEMENTED: 501,
    ErrorCode.UNKNOWN: 400,  # Triton's HTTP statuses for these three
    ErrorCode.ALREADY_EXISTS: 400,
    ErrorCode.CANCELLED: 400,
}

#: gRPC status code names (``grpc.StatusCode[name]``), the same meanings as HTTP_STATUS.
GRPC_STATUS = {
    ErrorCode.INVALID_ARGUMENT: "INVALID_ARGUMENT",
    ErrorCode.NOT_FOUND: "NOT_FOUND",
    ErrorCode.TOO_LARGE: "RESOURCE_EXHAUSTED",
    ErrorCode.TIMEOUT: "DEADLINE_EXCEEDED",
    ErrorCode.RESTRICTED: "UNAVAILABLE",  # Triton's choice for a restricted protocol
    ErrorCode.UNAVAILABLE: "UNAVAILABLE",
    ErrorCode.INTERNAL: "INTERNAL",
    ErrorCode.UNIMPLEMENTED: "UNIMPLEMENTED",
    ErrorCode.UNKNOWN: "UNKNOWN",
    ErrorCode.ALREADY_EXISTS: "ALREADY_EXISTS",
    ErrorCode.CANCELLED: "CANCELLED",
}

#: Triton's error codes (TRITONSERVER_Error_Code, ``pb_utils.TritonError.code()``) and ours.
TRITON_CODES = {0: ErrorCode.UNKNOWN, 1: ErrorCode.INTERNAL, 2: ErrorCode.NOT_FOUND, 3: ErrorCode.INVALID_ARGUMENT,
                4: ErrorCode.UNAVAILABLE, 5: ErrorCode.UNIMPLEMENTED, 6: ErrorCode.ALREADY_EXISTS,
                7: ErrorCode.CANCELLED}
_TRITON_CODE_OF = {ours: triton for triton, ours in TRITON_CODES.items()} | {
    ErrorCode.TOO_LARGE: 3, ErrorCode.TIMEOUT: 4, ErrorCode.RESTRICTED: 4}


#: Ray's errors for a request whose replica went away mid-call (by name: no Ray import here).
LOST_REPLICA_ERRORS = frozenset({"RayActorError", "ActorDiedError", "ActorUnavailableError", "NodeDiedError",
                                 "WorkerCrashedError"})


#: An absolute file path inside a message (two or more parts).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])(?:/[\w.@+~-]+){2,}")


def without_paths(text: str, limit: int = 400) -> str:
    """A message as a client may see it: absolute paths cut to their last two parts, the model's own
    (``.../<model>/config.pbtxt``, ``.../1/model.onnx``: the rest tells a stranger how the node is laid
    out), and at most ``limit`` characters. The whole text belongs in the server log."""
    text = _ABSOLUTE_PATH.sub(lambda match: ".../" + "/".join(match.group(0).rsplit("/", 2)[-2:]), text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class InferenceError(Exception):
    """An error a client should see: a code and a message, never a traceback.

    Every constructor argument goes to ``Exception.__init__`` so the error pickles across Ray processes.
    """

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(code, message)
        self.code = ErrorCode(code)
        self.message = message

    def __str__(self) -> str:
        return self.message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    @property
    def triton_code(self) -> int:
        """The code as Triton numbers it (what a BLS caller's ``error().code()`` reads)."""
        return _TRITON_CODE_OF[self.code]

    @classmethod
    def from_triton(cls, code: int, message: str) -> "InferenceError":
        """A model's TritonError as the client sees it (an unknown code is INTERNAL)."""
        return cls(TRITON_CODES.get(code, ErrorCode.INTERNAL), message)

    @classmethod
    def from_exception(cls, exc: BaseException) -> "InferenceError":
        """The client-facing form of any exception, unwrapping Ray's task error wrapper."""
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            exc = cause
        if isinstance(exc, InferenceError):
            return cls(exc.code, exc.message)
        if type(exc).__name__ == "BackPressureError":  # Serve's max_queued_requests (no Ray import here)
            return cls(ErrorCode.UNAVAILABLE, "the model's request queue is full; retry later")
        if type(exc).__name__ == "DeploymentUnavailableError":  # Serve: the model's deployment is gone or failing
            return cls(ErrorCode.UNAVAILABLE, "the model has no replica able to serve; retry later")
        if type(exc).__name__ in ("RequestCancelledError", "CancelledError"):
            return cls(ErrorCode.UNAVAILABLE, "the request was cancelled before it finished")
        if any(base.__name__ in LOST_REPLICA_ERRORS for base in type(exc).__mro__):
            return cls(ErrorCode.UNAVAILABLE, "the replica serving this request was lost (its process or node "
                                              "died); Serve starts another, retry")
        return cls(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}")


def invalid(message: str) -> InferenceError:
    return InferenceError(ErrorCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> InferenceError:
    return InferenceError(ErrorCode.NOT_FOUND, message)


def decoupled_over_unary(model: str) -> InferenceError:
    """A decoupled model asked for one response (Triton's code and words)."""
    return InferenceError(ErrorCode.UNIMPLEMENTED, f"model '{model}' is decoupled (it answers a request with any "
                          "number of responses): the inference endpoint doesn't support models with decoupled "
                          "transaction policy; use gRPC ModelStreamInfer, HTTP generate_stream or a handle's stream")


def unavailable(message: str) -> InferenceError:
    return InferenceError(ErrorCode.UNAVAILABLE, message)


# Triton's words for a model or version a request cannot reach (clients match their start); ours follow.
def unknown_model(model: str, version: int | str | None = None, detail: str = "") -> InferenceError:
    """No such model (or version): NOT_FOUND, "Request for unknown model: 'm' [version v] is not found"."""
    named = f" version {version}" if version not in (None, "") else ""
    return not_found(f"Request for unknown model: '{model}'{named} is not found" + (f"; {detail}" if detail else ""))


def no_available_versions(model: str, reason: str) -> InferenceError:
    """A known model with nothing loaded: UNAVAILABLE, Triton's "... has no available versions"."""
    return unavailable(f"Request for unknown model: '{model}' has no available versions: {reason}")


def version_not_ready(model: str, version: int | str, reason: str) -> InferenceError:
    """A known version that is loading, failed or retiring: UNAVAILABLE, Triton's "... is not at ready state"."""
    return unavailable(f"Request for unknown model: '{model}' version {version} is not at ready state: {reason}")
