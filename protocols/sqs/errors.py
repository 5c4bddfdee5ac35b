"""SQS's API errors: the JSON protocol's name and the Query protocol's code of each.

The codes are those of AWS's SQS API reference (and botocore's service
model); where the Query code differs, the JSON wire also sends it in the
`x-amzn-query-error` header, so SDKs on both wires see the same `Error.Code`.
"""

from __future__ import annotations

from moorage.protocols.aws.errors import AwsError

QUERY_CODES = {
    "QueueDoesNotExist": "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDeletedRecently": "AWS.SimpleQueueService.QueueDeletedRecently",
    "QueueNameExists": "QueueAlreadyExists",
    "MessageNotInflight": "AWS.SimpleQueueService.MessageNotInflight",
    "UnsupportedOperation": "AWS.SimpleQueueService.UnsupportedOperation",
    "PurgeQueueInProgress": "AWS.SimpleQueueService.PurgeQueueInProgress",
    "TooManyEntriesInBatchRequest": "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
    "EmptyBatchRequest": "AWS.SimpleQueueService.EmptyBatchRequest",
    "BatchEntryIdsNotDistinct": "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
    "BatchRequestTooLong": "AWS.SimpleQueueService.BatchRequestTooLong",
    "InvalidBatchEntryId": "AWS.SimpleQueueService.InvalidBatchEntryId",
}


def sqs_error(code: str, message: str, *, status: int = 400) -> AwsError:
    """An SQS error named as the JSON protocol names it, with its Query code."""
    return AwsError(code, message, status=status, query_code=QUERY_CODES.get(code))


def queue_does_not_exist() -> AwsError:
    return sqs_error("QueueDoesNotExist", "The specified queue does not exist.")


def invalid_parameter(message: str) -> AwsError:
    return AwsError("InvalidParameterValue", message)


def invalid_value(name: str, value: object, reason: str) -> AwsError:
    return invalid_parameter(f"Value {value} for parameter {name} is invalid. Reason: {reason}")


def missing(name: str) -> AwsError:
    return AwsError("MissingParameter", f"The request must contain the parameter {name}.")


def receipt_handle_invalid(handle: str) -> AwsError:
    return sqs_error(
        "ReceiptHandleIsInvalid",
        f'The input receipt handle "{handle}" is not a valid receipt handle.',
    )
