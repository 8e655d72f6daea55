"""`search serve` as the network sees it: the real server process, raw sockets where a client
misbehaves. Memory, disk, time and paths stay bounded; the key and the Host are checked."""

import io
import json
import os
import re
import socket
import struct
import time
import uuid
import zlib
from pathlib import Path

import httpx
import pytest
from PIL import Image

KEY = "test-key-0123456789abcdef"
CAP_MB = 1.0  # the server's --max-upload-mb here


@pytest.fixture(scope="module")
def served(sample_root, tmp_path_factory, ingest_tiny, live_server):
    """A private copy of the sample (its files may be replaced), ingested and served with an
    access key, a 1 MB upload cap and one-second deadlines for headers and bodies."""
    import shutil

    base = tmp_path_factory.mktemp("guard")
    root = Path(shutil.copytree(sample_root, base / "sample"))
    db = base / "db"
    assert ingest_tiny(root, str(db)).exit_code == 0
    args = ["--store", str(db), "--max-upload-mb", str(CAP_MB)]
    args += ["--header-timeout", "1", "--body-timeout", "1"]
    with live_server(*args, env={"SEARCH_API_KEY": KEY}) as (url, proc):
        yield url, proc, root


@pytest.fixture(scope="module")
def client(served):
    with httpx.Client(base_url=served[0], headers={"Authorization": f"Bearer {KEY}"}) as c:
        yield c


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height), 128).save(out, "PNG")
    return out.getvalue()


def _jpeg(size=(64, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, "red").save(out, "JPEG")
    return out.getvalue()


def _post(client, data: bytes, name="q.jpg", **form):
    return client.post("/api/search", files={"file": (name, data)}, data=form)


def _peak_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1))


def _metric(client, name: str) -> float:
    text = client.get("/metrics").text
    return float(re.search(rf"^{name} ([\d.e+]+)$", text, re.M).group(1))


# limits --------------------------------------------------------------------------------------
def test_a_40000_by_1_png_is_refused_without_the_memory(client, served):
    _, proc, _ = served
    thin = _png(40_000, 1)
    assert len(thin) < 1000  # a few hundred bytes on the wire
    _post(client, _jpeg())  # the server's working set for a normal query first
    before = _peak_kb(proc.pid)
    response = _post(client, thin, "thin.png")
    assert response.status_code == 400, response.text
    assert "40000 × 1" in response.json()["detail"]
    assert (_peak_kb(proc.pid) - before) / 1024 < 100  # peak RSS grew by less than 100 MB


def _raw(url: str, head: bytes, timeout: float = 10.0) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    sock.sendall(head)
    return sock


def _response(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
        if b"\r\n\r\n" in data and len(data) > data.index(b"\r\n\r\n") + 4:
            break
    return data


def _chunked_until_answered(sock: socket.socket, body: bytes) -> tuple[int, bytes]:
    """Send `body` in 64 KiB chunks until the server answers (or it is all sent); returns
    (bytes sent, the answer's first bytes) and closes the socket."""
    sent, answer = 0, b""
    sock.settimeout(0.05)
    while sent < len(body) and not answer:
        piece = body[sent : sent + 65536]
        try:
            sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            sent += len(piece)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
        try:
            answer = sock.recv(65536)
        except (TimeoutError, BlockingIOError):
            pass
        except ConnectionResetError:
            break
    sock.close()
    return sent, answer


def test_a_chunked_body_stops_being_read_at_the_cap(client, served):
    url = served[0]
    consumed = _metric(client, "http_request_body_bytes_total")
    head = (
        "POST /api/search HTTP/1.1\r\nHost: localhost\r\n"
        f"Authorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n\r\n"
    ).encode()
    part = (
        b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n"
    )
    sock = _raw(url, head + f"{len(part):x}\r\n".encode() + part + b"\r\n")
    sent, answer = _chunked_until_answered(sock, b"x" * 60_000_000)  # the photo, 60 MB
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    read = _metric(client, "http_request_body_bytes_total") - consumed
    cap = CAP_MB * 1e6 + 65536  # the photo and its form fields (BodyLimit.FORM_SLACK)
    assert read <= cap + 65536, (read, cap)  # at most one read buffer past the cap
    assert sent < 60_000_000


def test_a_lying_content_length_is_refused_before_reading(client, served):
    consumed = _metric(client, "http_request_body_bytes_total")
    head = (
        "POST /api/search HTTP/1.1\r\nHost: localhost\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: 2000000000\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n\r\n"
    ).encode()
    sock = _raw(served[0], head + b"x" * 1000)
    answer = _response(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413") and b"larger than 1 MB" in answer
    assert _metric(client, "http_request_body_bytes_total") == consumed


def test_slow_headers_and_slow_bodies_are_cut_off(served):
    url = served[0]
    sock = _raw(url, b"GET /healthz HTTP/1.1\r\n")
    started = time.monotonic()
    closed = False
    for byte in b"Host: localhost\r\nX-Slow: 1\r\n":  # one byte every 0.25 s
        try:
            sock.sendall(bytes([byte]))
            time.sleep(0.25)
            if sock.recv(1, socket.MSG_DONTWAIT) == b"":
                closed = True
                break
        except BlockingIOError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
    sock.close()
    assert closed and time.monotonic() - started < 4  # the header deadline is 1 s
    head = (
        "POST /api/search HTTP/1.1\r\nHost: localhost\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: 100000\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n\r\n"
    ).encode()
    sock = _raw(url, head + b'--x\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n')
    started = time.monotonic()
    sock.settimeout(0.25)
    answer = b""
    for _ in range(40):
        try:
            sock.sendall(b"x")
            answer = sock.recv(65536)
            if answer:
                break
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < 4  # the body deadline is 1 s


def test_one_photo_a_request(client):
    files = [("file", (f"{n}.jpg", _jpeg(), "image/jpeg")) for n in range(50)]
    response = client.post("/api/search", files=files)
    assert response.status_code == 400 and "one photo" in response.json()["detail"]


@pytest.mark.parametrize(
    ("bbox", "reason"), [("5000,5000,6000,6000", "outside"), ("10,10,13,13", "smaller than")]
)
def test_a_box_outside_the_photo_or_too_small_is_refused(client, bbox, reason):
    response = _post(client, _jpeg((80, 80)), bbox=bbox)
    assert response.status_code == 422 and reason in response.json()["detail"]


@pytest.mark.parametrize("kind", ["GIF", "TIFF", "ICO"])
def test_only_the_formats_the_page_names_are_taken(client, kind):
    out = io.BytesIO()
    Image.new("RGB", (64, 64), "blue").save(out, kind)
    response = _post(client, out.getvalue(), f"q.{kind.lower()}")
    assert response.status_code == 400 and "JPEG, PNG, WebP or BMP" in response.json()["detail"]
    assert client.get("/api/info").json()["formats"] == ["JPEG", "PNG", "WEBP", "BMP"]


# photos --------------------------------------------------------------------------------------
def _stored(client, root: Path) -> tuple[str, Path]:
    """A stored photo's id and its file in the served dataset."""
    hit = _post(client, _jpeg(), group="none", top=1, source="shop").json()["results"][0]
    return hit["photo"]["id"], root / hit["photo"]["path"]


def test_a_link_out_of_the_dataset_is_never_followed(client, served):
    pid, path = _stored(client, served[2])
    original = path.read_bytes()
    path.unlink()
    path.symlink_to("/etc/passwd")
    try:
        for url in (f"/images/{pid}.jpg", f"/images/{pid}.jpg?size=128"):
            response = client.get(url)
            assert response.status_code == 404 and "root:" not in response.text
            assert str(served[2]) not in response.text  # no server path in the answer
    finally:
        path.unlink()
        path.write_bytes(original)
    assert client.get(f"/images/{pid}.jpg").content == original


def test_a_file_that_is_not_an_image_is_not_served_as_one(client, served):
    pid, path = _stored(client, served[2])
    original = path.read_bytes()
    path.write_text("#!/bin/sh\necho not a photo\n")
    try:
        response = client.get(f"/images/{pid}.jpg")
        assert response.status_code == 415 and "not an image" in response.json()["detail"]
    finally:
        path.write_bytes(original)


def test_a_missing_photo_does_not_name_the_server_folder(client, served):
    pid, path = _stored(client, served[2])
    moved = path.with_name("moved.bak")
    path.rename(moved)
    try:
        response = client.get(f"/images/{pid}.jpg")
        assert response.status_code == 404 and str(served[2]) not in response.text
    finally:
        moved.rename(path)


def test_point_ids_have_one_spelling_and_long_ones_are_not_echoed(client, served):
    pid, _ = _stored(client, served[2])
    assert client.get(f"/api/points/{pid}").status_code == 200
    for other in (pid.upper(), "{" + pid + "}", pid.replace("-", ""), "urn:uuid:" + pid):
        for path in (
            f"/api/points/{other}",
            f"/images/{other}.jpg",
            f"/api/points/{other}/similar",
        ):
            assert client.get(path).status_code == 404, path
    long_id = "a" * 100_000
    request = f"GET /api/points/{long_id}/similar HTTP/1.1\r\nHost: localhost\r\n\r\n"
    sock = _raw(served[0], request.encode())
    answer = _response(sock)
    sock.close()
    assert re.match(rb"HTTP/1.1 (400|404|414|431)", answer) and len(answer) < 1000
    assert client.get(f"/api/points/{'a' * 4000}/similar").status_code == 404
    recommend = client.post("/api/recommend", json={"positive": [long_id]})
    assert recommend.status_code == 422 and len(recommend.content) < 1000


# access --------------------------------------------------------------------------------------
def test_the_key_is_needed_everywhere_but_health_and_the_page(served):
    url = served[0]
    for path in ("/api/info", "/api/facets", "/metrics", "/docs", "/openapi.json"):
        assert httpx.get(url + path).status_code == 401, path
        wrong = httpx.get(url + path, headers={"Authorization": "Bearer wrong"})
        assert wrong.status_code == 401, path
        right = httpx.get(url + path, headers={"Authorization": f"Bearer {KEY}"})
        assert right.status_code == 200, path
    assert httpx.get(url + "/healthz").status_code == 200
    assert httpx.get(url + "/").status_code == 200  # the page asks for the key itself
    with httpx.Client(base_url=url) as browser:
        assert browser.post("/auth", json={"key": "wrong"}).status_code == 401
        login = browser.post("/auth", json={"key": KEY})
        assert login.status_code == 204 and "HttpOnly" in login.headers["set-cookie"]
        assert browser.get("/api/info").status_code == 200  # the cookie carries the key


def test_the_key_is_never_printed(served):
    proc = served[1]
    proc.poll()
    assert proc.returncode is None
    os.set_blocking(proc.stdout.fileno(), False)
    printed = proc.stdout.read() or ""
    assert "serving collection" in printed and KEY not in printed


def test_other_host_names_are_refused(client):
    assert client.get("/api/info", headers={"Host": "evil.example"}).status_code == 400
    assert client.get("/api/info", headers={"Host": "localhost:8000"}).status_code == 200


def test_every_answer_carries_the_security_headers(client, served):
    for response in (
        client.get("/"),
        client.get("/api/info"),
        client.get(f"/api/points/{uuid.uuid4()}"),
        httpx.get(served[0] + "/api/info"),  # a 401
    ):
        headers = response.headers
        assert headers["x-content-type-options"] == "nosniff"
        assert "default-src 'self'" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"


def test_the_docs_are_served_from_the_app(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "http" not in page.text.lower().replace("http-equiv", "")
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith("/docs/assets/") for s in sources)
    for source in sources:
        asset = client.get(source)
        assert asset.status_code == 200 and len(asset.content) > 10
    assert "/api/recommend" in client.get("/openapi.json").json()["paths"]


def test_info_shows_paths_only_with_a_key(client, served):
    info = client.get("/api/info").json()  # this server has a key: paths for its holders
    assert str(served[2]) in json.dumps(info) or info["dataset_root"] is not None
    assert info["access_key"] is True


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width × height over one row of data."""
    data = bytearray(_png(1, 1))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_a_lying_png_header_is_refused(client):
    response = _post(client, _png_header_only(400_000, 1), "thin.png")
    assert response.status_code == 400


# a second hostile look: connections, metrics, JSON, vectors, methods, headers, origins -------
PER_CLIENT = 8  # the open server's --client-connections


@pytest.fixture(scope="module")
def open_server(served, ingest_tiny, tmp_path_factory, live_server):
    """The same photos served without a key, with the default header deadline (10 s), so
    that idle connections stay idle for the whole test."""
    db = tmp_path_factory.mktemp("open") / "db"
    assert ingest_tiny(served[2], str(db)).exit_code == 0
    args = ["--store", str(db), "--client-connections", str(PER_CLIENT)]
    with live_server(*args) as (url, proc):
        yield url, proc


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _rss_kb(pid: int) -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))


def _still_open(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True  # nothing to read and not closed
    except OSError:
        return False


def test_idle_connections_cost_their_client_not_the_service(open_server):
    url, _ = open_server
    idle = []
    for _ in range(300):  # one client (127.0.0.2) opens 300 connections and sends nothing
        sock = socket.socket()
        sock.bind(("127.0.0.2", 0))
        sock.settimeout(5)
        sock.connect(_address(url))
        idle.append(sock)
    try:
        time.sleep(0.5)
        held = sum(_still_open(s) for s in idle)
        assert held <= PER_CLIENT, held  # the rest were closed as they opened
        with httpx.Client(base_url=url, timeout=5) as other:  # another client: 127.0.0.1
            started = time.monotonic()
            health = other.get("/healthz")
            assert health.status_code == 200 and health.json()["points"] > 0
            found = _post(other, _jpeg(), top=3)
            assert found.status_code == 200, found.text
            assert time.monotonic() - started < 1.0
    finally:
        for sock in idle:
            sock.close()


def _pipelined(url: str, requests: list[bytes], per_write: int = 200) -> list[bytes]:
    """Send the requests on one connection, `per_write` at a time, and read each answer's
    status line."""
    statuses = []
    with socket.create_connection(_address(url), timeout=10) as sock:
        for start in range(0, len(requests), per_write):
            batch = requests[start : start + per_write]
            sock.sendall(b"".join(batch))
            data = b""
            while data.count(b"HTTP/1.1 ") < len(batch):
                chunk = sock.recv(1 << 16)
                assert chunk, "the server closed the connection"
                data += chunk
            statuses += re.findall(rb"HTTP/1.1 (\d{3})", data)
    return statuses


def test_invented_methods_leave_the_metrics_bounded(open_server):
    url, _ = open_server
    paths = ["/healthz", "/", "/auth", "/static/app.js"]

    def requests(n: int, seed: int) -> list[bytes]:
        return [
            f"M{seed}X{i} {paths[i % 4]} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
            for i in range(n)
        ]

    def lines() -> int:
        return len(httpx.get(url + "/metrics").text.splitlines())

    assert set(_pipelined(url, requests(400, 0))) == {b"405"}
    lines()  # /metrics's own label sets, once
    after_400 = lines()
    for part in range(4):  # 20,000 more, each method new
        assert set(_pipelined(url, requests(5000, part + 1))) == {b"405"}
    assert lines() == after_400  # a fixed number of label sets: "other" for every method


def test_a_20_mb_json_body_is_refused_before_it_is_parsed(open_server):
    url, proc = open_server
    body = b"[" + b"3e38," * 4_000_000 + b"0]"  # 20 MB of floats
    head = (
        "POST /api/recommend HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    before = _rss_kb(proc.pid)
    sock = _raw(url, head)
    answer = _response(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    chunked = (
        b"POST /api/recommend HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    sent, answer = _chunked_until_answered(_raw(url, chunked), body)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < len(body) // 10  # it stopped reading long before the end
    assert (_rss_kb(proc.pid) - before) / 1024 < 50  # MB
    assert httpx.get(url + "/healthz", timeout=1).status_code == 200


def test_vectors_whose_length_overflows_are_refused(open_server):
    url, _ = open_server
    with httpx.Client(base_url=url) as web:
        dim = web.get("/api/info").json()["model"]["dim"]
        for vector in ([3e38] * dim, [0.0] * dim, [1.0] * (dim + 1)):
            answer = web.post("/api/recommend", json={"vectors": [vector]})
            assert answer.status_code == 422, answer.text
            assert "finite" in answer.json()["detail"]
        good = web.post("/api/recommend", json={"vectors": [[1.0] * dim], "top": 2})
        assert good.status_code == 200 and len(good.json()["results"]) == 2


def test_a_photo_liked_and_not_it_at_once_is_refused(open_server):
    url, _ = open_server
    with httpx.Client(base_url=url) as web:
        answer = _post(web, _jpeg(), top=2, group="none")
        pid = answer.json()["results"][0]["photo"]["id"]
        both = web.post("/api/recommend", json={"positive": [pid], "negative": [pid]})
        assert both.status_code == 422 and "both liked and not it" in both.json()["detail"]


def test_head_answers_like_get_without_a_body(open_server):
    url, _ = open_server
    with httpx.Client(base_url=url) as web:
        pid = _post(web, _jpeg(), top=1, group="none").json()["results"][0]["photo"]["id"]
        for path in ("/healthz", "/api/info", f"/images/{pid}.jpg", "/"):
            get, head = web.get(path), web.head(path)
            assert head.status_code == get.status_code == 200, path
            assert (
                head.content == b""
                and head.headers["content-type"] == (get.headers["content-type"])
            )


def test_a_large_header_in_one_write_is_refused(open_server):
    url, _ = open_server
    request = f"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: {'a' * 65536}\r\n\r\n"
    sock = _raw(url, request.encode())  # one write: uvicorn's own cap never sees it in pieces
    answer = _response(sock)
    sock.close()
    assert re.match(rb"HTTP/1.1 (431|400)", answer), answer[:200]
    assert httpx.get(url + "/healthz").status_code == 200


def test_a_cookie_keyed_request_from_another_origin_is_refused(served):
    url = served[0]
    with httpx.Client(base_url=url) as browser:
        assert browser.post("/auth", json={"key": KEY}).status_code == 204
        own = url.removeprefix("http://")
        for headers, status in (
            ({"Origin": "http://localhost:9999"}, 403),  # another localhost port
            ({"Sec-Fetch-Site": "cross-site"}, 403),
            ({"Sec-Fetch-Site": "same-site"}, 403),
            ({"Origin": f"http://{own}", "Sec-Fetch-Site": "same-origin"}, 200),
            ({}, 200),  # no browser headers: not a page's request
        ):
            answer = browser.post(
                "/api/search", files={"file": ("q.jpg", _jpeg())}, data={"top": 2}, headers=headers
            )
            assert answer.status_code == status, (headers, answer.text)
        assert (
            browser.get("/api/info", headers={"Origin": "http://evil.example"}).status_code == 200
        )
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}) as program:
        answer = program.post(
            "/api/recommend", json={"vectors": [[1.0] * 8]}, headers={"Origin": "http://x.example"}
        )
        assert answer.status_code != 403  # the Bearer key is no cookie a page can borrow


def test_the_api_is_what_its_openapi_description_says(open_server, tmp_path):
    """Schemathesis, every check on, against the live server's /openapi.json: statuses,
    error bodies, content types and bounds as documented (a bounded budget: 50 examples an
    operation, a fixed seed). tests/search/schemathesis.toml names the rules JSON Schema
    cannot state."""
    import subprocess
    import sys

    url, _ = open_server
    st = Path(sys.executable).parent / "st"
    config = Path(__file__).with_name("schemathesis.toml")
    run = subprocess.run(
        [st, "--config-file", config, "run", f"{url}/openapi.json", "--checks", "all",
         "--max-examples", "50", "--seed", "1", "--no-color"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"},
        cwd=tmp_path,  # its own cache folder goes there, not into the checkout
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert generated and generated.group(1) == generated.group(2) and int(generated.group(1)) > 100
