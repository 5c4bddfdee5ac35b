"""The Query protocol's flattened parameters and XML results, without a network."""

from __future__ import annotations

from urllib.parse import parse_qsl
from xml.etree import ElementTree

from moorage.protocols.aws.query import members, name_value_map, scalar_list
from moorage.protocols.sqs.messages import attributes_md5, decode_receipt, encode_receipt
from moorage.protocols.sqs.wire import query_params, reply

NS = "{http://queue.amazonaws.com/doc/2012-11-05/}"


def _parse(body: bytes) -> ElementTree.Element:
    """Our own server's XML, made in this test: trusted input."""
    return ElementTree.fromstring(body)  # noqa: S314


def test_flattened_members_in_index_order() -> None:
    fields = dict(
        parse_qsl(
            "Attribute.2.Name=DelaySeconds&Attribute.2.Value=5"
            "&Attribute.1.Name=VisibilityTimeout&Attribute.1.Value=40"
            "&AttributeName.10=Policy&AttributeName.2=All&Entries.member.1.Id=a"
            "&Attribute.0.Name=ignored&Attribute.x.Name=ignored"
        )
    )
    assert name_value_map(fields, "Attribute") == {"VisibilityTimeout": "40", "DelaySeconds": "5"}
    assert scalar_list(fields, "AttributeName") == ["All", "Policy"]
    assert members(fields, "Entries.member") == [{"Id": "a"}]


def test_send_message_batch_as_aws_documents_it() -> None:
    # The example request of AWS's SendMessageBatch (Query API) page, in form fields.
    fields = dict(
        parse_qsl(
            "SendMessageBatchRequestEntry.1.Id=test_msg_001"
            "&SendMessageBatchRequestEntry.1.MessageBody=test%20message%20body%201"
            "&SendMessageBatchRequestEntry.2.Id=test_msg_002"
            "&SendMessageBatchRequestEntry.2.MessageBody=test%20message%20body%202"
            "&SendMessageBatchRequestEntry.2.DelaySeconds=60"
            "&SendMessageBatchRequestEntry.2.MessageAttribute.1.Name=test_attribute_name_1"
            "&SendMessageBatchRequestEntry.2.MessageAttribute.1.Value.StringValue=test_attribute_value_1"
            "&SendMessageBatchRequestEntry.2.MessageAttribute.1.Value.DataType=String"
            "&QueueUrl=http%3A%2F%2Fh%2F000000000000%2Fq&Version=2012-11-05"
        )
    )
    assert query_params("SendMessageBatch", fields) == {
        "QueueUrl": "http://h/000000000000/q",
        "Entries": [
            {"Id": "test_msg_001", "MessageBody": "test message body 1"},
            {
                "Id": "test_msg_002",
                "MessageBody": "test message body 2",
                "DelaySeconds": "60",
                "MessageAttributes": {
                    "test_attribute_name_1": {
                        "StringValue": "test_attribute_value_1",
                        "DataType": "String",
                    }
                },
            },
        ],
    }


def test_results_as_query_xml() -> None:
    result = {
        "Messages": [
            {
                "MessageId": "m1",
                "Body": "<a & b>",
                "Attributes": {"SentTimestamp": "1"},
                "MessageAttributes": {"k": {"DataType": "String", "StringValue": "v"}},
            }
        ]
    }
    body = reply("ReceiveMessage", "query", result, "req-1").body
    root = _parse(body)
    message = root.find(f"{NS}ReceiveMessageResult/{NS}Message")
    assert message is not None
    assert message.findtext(f"{NS}Body") == "<a & b>"
    assert message.findtext(f"{NS}Attribute/{NS}Name") == "SentTimestamp"
    assert message.findtext(f"{NS}MessageAttribute/{NS}Value/{NS}StringValue") == "v"
    assert root.findtext(f"{NS}ResponseMetadata/{NS}RequestId") == "req-1"
    empty = _parse(reply("ListQueues", "query", {}, "r").body)
    assert empty.find(f"{NS}ListQueuesResult") is not None
    deleted = _parse(reply("DeleteMessage", "query", {}, "r").body)
    assert deleted.find(f"{NS}DeleteMessageResult") is None


def test_attribute_digest_matches_aws() -> None:
    # Recomputed by hand from AWS's algorithm: the lengths are 4-byte big-endian.
    import hashlib
    import struct

    def part(data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + data

    expected = hashlib.md5(
        part(b"a") + part(b"Number") + b"\x01" + part(b"1")
        + part(b"b") + part(b"Binary") + b"\x02" + part(b"\x00"),
        usedforsecurity=False,
    ).hexdigest()  # fmt: skip
    attributes = {
        "b": {"DataType": "Binary", "BinaryValue": "AA=="},
        "a": {"DataType": "Number", "StringValue": "1"},
    }
    assert attributes_md5(attributes) == expected


def test_receipt_handles_name_their_queue() -> None:
    handle = encode_receipt("/", "q", 7, 2, "e")
    assert decode_receipt(handle, "/", "q") == (7, 2, "e")
