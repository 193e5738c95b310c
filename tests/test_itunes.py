"""The iTunes client against `responses` (the wire format and error handling)."""

import json
from urllib.parse import parse_qs, urlsplit

import pytest
import responses

from halftunes_cli.config import SessionConfiguration
from halftunes_cli.errors import ApiError, RateLimitedError, UsageError
from halftunes_cli.itunes import ITunesClient, encode_term
from halftunes_cli.session import Session

API = "https://itunes.apple.com"
TRACK = {
    "trackId": 1,
    "trackName": "Better Together",
    "artistName": "Jack Johnson",
    "collectionName": "In Between Dreams",
    "previewUrl": "https://a/p.m4a",
    "trackTimeMillis": 207679,
    "kind": "song",
    "extra": [1, 2],
}


@pytest.fixture
def client():
    session = Session(
        SessionConfiguration.ephemeral(api_url=API, retries=1, backoff_base_seconds=0.01)
    )
    return ITunesClient(session)


@pytest.mark.parametrize(
    "term, encoded",
    [
        ("jack johnson", "jack+johnson"),
        ("王菲", "%E7%8E%8B%E8%8F%B2"),
        ("🎸", "%F0%9F%8E%B8"),
        ("rock & roll", "rock+%26+roll"),
        ("1+1", "1%2B1"),
        ("c#", "c%23"),
        ("ac/dc", "ac%2Fdc"),
    ],
)
def test_encode_term(term, encoded):
    assert encode_term(term) == encoded


@responses.activate
@pytest.mark.parametrize("term", ["王菲", "DJ 🎧 Emoji", "rock & roll + c# / more"])
def test_search_term_survives_the_wire(client, term):
    responses.get(f"{API}/search", json={"resultCount": 1, "results": [TRACK]})
    tracks = client.search(term, limit=5, country="gb")
    sent = urlsplit(responses.calls[0].request.url)
    query = parse_qs(sent.query)
    assert query["term"] == [term]
    assert query["limit"] == ["5"] and query["country"] == ["GB"]
    assert query["media"] == ["music"] and query["entity"] == ["song"]
    assert sent.query.split("&")[0] == "term=" + encode_term(term)  # spaces as '+', rest %XX
    assert tracks[0].trackName == "Better Together" and tracks[0].raw == TRACK


@responses.activate
def test_parses_json_whatever_the_content_type(client):
    responses.get(
        f"{API}/search",
        body=json.dumps({"resultCount": 1, "results": [TRACK]}),
        content_type="text/javascript; charset=utf-8",
    )
    assert client.search("x")[0].trackId == 1


@responses.activate
@pytest.mark.parametrize("status", [403, 429])
def test_rate_limit_is_explained_and_not_retried(client, status):
    responses.get(f"{API}/search", status=status, body="slow down")
    with pytest.raises(RateLimitedError) as info:
        client.search("x")
    assert "rate limited" in info.value.message and "20 calls a minute" in info.value.hint
    assert len(responses.calls) == 1


@responses.activate
@pytest.mark.parametrize(
    "body",
    [
        '{"resultCount": 1, "results": [',
        "<html>down</html>",
        '{"results": {"a": 1}}',
        "[1, 2]",
        '{"results": [1]}',
    ],
)
def test_bad_bodies_are_api_errors(client, body):
    responses.get(f"{API}/search", body=body)
    with pytest.raises(ApiError):
        client.search("x")


@responses.activate
def test_5xx_is_retried(client):
    responses.get(f"{API}/search", status=503)
    responses.get(f"{API}/search", json={"resultCount": 1, "results": [TRACK]})
    assert client.search("x")[0].trackId == 1
    assert len(responses.calls) == 2


@pytest.mark.parametrize("limit", [0, 201, -1])
def test_limit_bounds(client, limit):
    with pytest.raises(UsageError, match="between 1 and 200"):
        client.search("x", limit=limit)


@pytest.mark.parametrize("term", ["", "   "])
def test_empty_term(client, term):
    with pytest.raises(UsageError, match="empty"):
        client.search(term)


@responses.activate
def test_lookup_batches_ids(client):
    responses.get(f"{API}/lookup", json={"resultCount": 1, "results": [TRACK]})
    tracks = client.lookup([1, 2])
    assert parse_qs(urlsplit(responses.calls[0].request.url).query)["id"] == ["1,2"]
    assert [t.trackId for t in tracks] == [1]
    assert tracks[0].has_preview and tracks[0].previewUrl == "https://a/p.m4a"
