"""AWS API errors, and how each wire format renders them.

An `AwsError` names the error as the AWS JSON 1.0 protocol does (the suffix
of `__type`, e.g. `QueueDoesNotExist`) and, where the Query protocol's
`<Code>` differs, that code too (`AWS.SimpleQueueService.NonExistentQueue`).
Current SDKs that speak JSON to SQS read the Query code from the
`x-amzn-query-error: <code>;Sender` header (the service is "awsQueryCompatible"),
so a client sees the same `Error.Code` on both wires.

The common errors and their HTTP statuses follow AWS's "Common Errors" page:
InvalidAction 400, InvalidClientTokenId 403, MissingAuthenticationToken 403,
MalformedQueryString 404, RequestExpired 400, IncompleteSignature 400 (the
Query services' page), SignatureDoesNotMatch 403, AccessDenied 403.
"""

from __future__ import annotations

import json
from xml.sax.saxutils import escape

JSON_CONTENT_TYPE = "application/x-amz-json-1.0"
XML_CONTENT_TYPE = "text/xml"


class AwsError(Exception):
    """An API error answered to the client in its wire format.

    Args:
        code: the error's name as the JSON protocol's `__type` suffix.
        message: the human-readable text.
        status: the HTTP status (400 unless AWS answers otherwise).
        sender_fault: `Sender` (the client's fault) or `Receiver` in the Query `<Type>`.
        query_code: the Query protocol's `<Code>` when it differs from `code`.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int = 400,
        sender_fault: bool = True,
        query_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.sender_fault = sender_fault
        self.query_code = query_code or code

    @property
    def fault(self) -> str:
        return "Sender" if self.sender_fault else "Receiver"

    def json_body(self, service: str) -> bytes:
        """The AWS JSON 1.0 body: `{"__type": "com.amazonaws.<service>#<code>", "message"}`."""
        return json.dumps(
            {"__type": f"com.amazonaws.{service}#{self.code}", "message": self.message}
        ).encode()

    def json_headers(self) -> dict[str, str]:
        """The header awsQueryCompatible SDKs read the Query code and fault from."""
        return {"x-amzn-query-error": f"{self.query_code};{self.fault}"}

    def xml_body(self, request_id: str) -> bytes:
        """The Query protocol's `<ErrorResponse>`."""
        return (
            '<?xml version="1.0"?><ErrorResponse><Error>'
            f"<Type>{self.fault}</Type><Code>{escape(self.query_code)}</Code>"
            f"<Message>{escape(self.message)}</Message><Detail/></Error>"
            f"<RequestId>{escape(request_id)}</RequestId></ErrorResponse>"
        ).encode()


def invalid_action(action: str) -> AwsError:
    return AwsError("InvalidAction", f"The action {action} is not valid for this endpoint.")


def invalid_parameter_value(message: str) -> AwsError:
    return AwsError("InvalidParameterValue", message)


def missing_parameter(name: str) -> AwsError:
    return AwsError(
        "MissingParameter", f"The request must contain the parameter {name}.", query_code=None
    )


def access_denied(message: str) -> AwsError:
    return AwsError("AccessDenied", message, status=403, query_code="AccessDenied")
