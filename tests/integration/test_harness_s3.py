"""The S3 harness serves plain S3 (path-style, like MinIO) and can be stopped and restarted on
the same endpoint for outage tests."""

from __future__ import annotations

import aioboto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from tests.harness.s3 import S3Info, unique_bucket

pytestmark = pytest.mark.integration


def test_path_style_put_get_with_metadata(s3: S3Info) -> None:
    client = s3.boto3_client()
    bucket = unique_bucket("reports")
    client.create_bucket(Bucket=bucket)
    body = b'{"workload": "api", "savings_usd": 12.5}'
    put = client.put_object(
        Bucket=bucket,
        Key="2026/11/report.json",
        Body=body,
        ContentType="application/json",
        Metadata={"run-id": "r-42", "policy": "default"},
    )
    assert put["ResponseMetadata"]["HTTPStatusCode"] == 200

    got = client.get_object(Bucket=bucket, Key="2026/11/report.json")
    assert got["Body"].read() == body
    assert got["Metadata"] == {"run-id": "r-42", "policy": "default"}
    assert got["ContentType"] == "application/json"
    listed = client.list_objects_v2(Bucket=bucket, Prefix="2026/")
    assert [o["Key"] for o in listed["Contents"]] == ["2026/11/report.json"]

    with pytest.raises(ClientError) as missing:
        client.get_object(Bucket=bucket, Key="nope")
    assert missing.value.response["Error"]["Code"] == "NoSuchKey"


def test_requests_are_path_style(s3: S3Info) -> None:
    client = s3.boto3_client()
    bucket = unique_bucket("style")
    seen: list[str] = []
    client.meta.events.register("before-send.s3.*", lambda request, **_: seen.append(request.url))
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert seen, "no request was sent"
    assert all(url.startswith(f"{s3.endpoint_url}/{bucket}") for url in seen), seen


async def test_aioboto3_reads_what_boto3_wrote(s3: S3Info) -> None:
    bucket = unique_bucket("async")
    s3.boto3_client().create_bucket(Bucket=bucket)
    session = aioboto3.Session()
    async with session.client("s3", **s3.client_kwargs()) as client:
        await client.put_object(Bucket=bucket, Key="a.json", Body=b"{}", Metadata={"k": "v"})
        head = await client.head_object(Bucket=bucket, Key="a.json")
    assert head["Metadata"] == {"k": "v"}
    assert head["ContentLength"] == 2


def test_stop_and_start_on_the_same_endpoint(s3_outage: S3Info) -> None:
    s3 = s3_outage
    client = s3.boto3_client()
    bucket = unique_bucket("outage")
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="before", Body=b"1")
    pid_before = s3.server.pid

    s3.stop()
    assert not s3.is_up()
    with pytest.raises(EndpointConnectionError):
        client.list_buckets()

    s3.start()
    assert s3.is_up()
    assert s3.server.pid != pid_before
    # Same endpoint, same client object: it works again, but moto's in-memory state is gone.
    names = [b["Name"] for b in client.list_buckets()["Buckets"]]
    assert bucket not in names
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="after", Body=b"2")
    assert client.get_object(Bucket=bucket, Key="after")["Body"].read() == b"2"


def test_ensure_up_brings_a_stopped_server_back(s3_outage: S3Info) -> None:
    s3_outage.stop()
    assert not s3_outage.is_up()
    s3_outage.ensure_up()
    assert s3_outage.is_up()
    assert s3_outage.boto3_client().list_buckets()["Buckets"] == []


def test_outage_server_is_private(s3: S3Info, s3_outage: S3Info) -> None:
    assert s3_outage.endpoint_url != s3.endpoint_url
    bucket = unique_bucket("shared")
    s3.boto3_client().create_bucket(Bucket=bucket)
    s3_outage.stop()
    assert bucket in [b["Name"] for b in s3.boto3_client().list_buckets()["Buckets"]]


def test_reset_drops_all_buckets(s3_outage: S3Info) -> None:
    client = s3_outage.boto3_client()
    bucket = unique_bucket("reset")
    client.create_bucket(Bucket=bucket)
    assert [b["Name"] for b in client.list_buckets()["Buckets"]] == [bucket]
    s3_outage.reset()
    assert client.list_buckets()["Buckets"] == []
