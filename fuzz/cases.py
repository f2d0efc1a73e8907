"""Case generators, one per entry point: valid requests mutated deterministically.

``generate(ctx, seed, index)`` derives everything of case ``index`` from
``(seed, index)`` alone, so a run is reproducible whatever the thread
scheduling (the keys of the pairs are fresh randomness, so ciphertexts are
not, but every mutation, target and choice is).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from mterelay.client.messages import SealOptions
from mterelay.protocol.pairing import PendingPairing

from fuzz import mutate
from fuzz.mutate import NASTY, b64, damage_bytes, damage_text, flip_bytes, flip_token
from fuzz.parts import Case, Parts
from fuzz.session import Client, client_id_for

#: Share of the cases per entry point (sums to 1).
WEIGHTS = {"proxy": 0.34, "pair": 0.10, "outbound": 0.15, "raw": 0.12, "passthrough": 0.08,
           "echo": 0.05, "relay-head": 0.07, "abort": 0.08, "slow": 0.01}


@dataclass
class Context:
    """What generators need from the running stack."""

    balancer: int
    inbound: list[int]
    outbound: list[int]          # [A1 (allow-list), A2 (none)]
    every: list[int]             # every relay port (raw garbage goes anywhere)
    secret_b: str
    token: str
    clients: list[Client]        # paired with B through the balancer
    pendings: list[PendingPairing]  # precomputed valid pairing entries (reused keys)
    entries: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.entries = [p.request_entry() for p in self.pendings]


def rng_for(seed: int, index: int) -> random.Random:
    return random.Random(f"{seed}:{index}")


def generate(ctx: Context, seed: int, index: int, weights: dict[str, float] = WEIGHTS) -> Case:
    rng = rng_for(seed, index)
    entry = rng.choices(list(weights), list(weights.values()))[0]
    case_id = f"f{seed}-{index}"
    return GENERATORS[entry](ctx, rng, case_id)


# ---------------------------------------------------------------- encrypted proxy

def _sealed(ctx: Context, rng: random.Random, case_id: str, *, big: bool = False) -> Any:
    client = rng.choice(ctx.clients)
    method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "GET", "POST"])
    has_body = method in ("POST", "PUT", "PATCH")
    size = rng.choice([0, 1, 15, 16, 17, 100, 1000, 65535, 65536, 65537, 140000]) if big \
        else rng.choice([0, 1, 17, 100, 1000, 4000])
    body = bytes(rng.getrandbits(8) for _ in range(min(size, 64))) * (size // 64 + 1)
    body = body[:size] if has_body else None
    options = SealOptions.build(
        seal_url=rng.random() < 0.8,
        seal_headers=rng.choice(["all", "all", "none", ["authorization"]]),
        framing=rng.choice(["MKE", "MTE"]),
        response_headers=rng.choice(["*", "*", "*", ["content-type"]]))
    headers = [("content-type", "application/json"), ("authorization", "Bearer fuzz"),
               ("x-api-key", "k-" + case_id), ("accept", "*/*")]
    target = f"/api/fuzz/{rng.randrange(100)}?case={case_id}&fuzzsecret=q{rng.randrange(10**6)}"
    return client.seal(method, target, headers, body, case=case_id,
                       pair_index=rng.randrange(len(client.pairs)), options=options)


def _relay_field(rng: random.Random, value: bytes) -> bytes:
    fields = value.decode("ascii").split(",")
    op = rng.randrange(9)
    i = rng.randrange(len(fields))
    if op == 0:
        fields[i] = rng.choice(NASTY)
    elif op == 1:
        del fields[i]
    elif op == 2:
        fields.insert(i, rng.choice(["0", "1", "MTE", ""]))
    elif op == 3:  # seq: neighbours and limits
        seq = int(fields[7])
        fields[7] = str(rng.choice([seq + 1, max(seq - 1, 0), seq + 5000, 2**53 - 1, 2**53, 0]))
    elif op == 4:  # flip one flag (bound in the AAD)
        j = rng.randrange(3, 7)
        fields[j] = "1" if fields[j] == "0" else "0"
    elif op == 5:
        fields[2] = "MKE" if fields[2] == "MTE" else "MTE"
    elif op == 6:
        fields[1] = b64(rng.randbytes(16))  # a pair that does not exist
    elif op == 7:
        fields[0] = damage_text(rng, fields[0])
    else:
        fields[i] = damage_text(rng, fields[i])
    return ",".join(fields).encode("utf-8", "surrogatepass")


def _proxy_mutators(ctx: Context) -> list[tuple[str, Callable[[random.Random, Parts], None]]]:
    def relay_field(rng: random.Random, p: Parts) -> None:
        p.set(b"x-mte-relay", _relay_field(rng, p.get(b"x-mte-relay") or b""))

    def relay_client(rng: random.Random, p: Parts) -> None:
        fields = (p.get(b"x-mte-relay") or b"").split(b",")
        other = rng.choice([client_id_for(ctx.secret_b), client_id_for("another-secret-" * 3),
                            client_id_for(ctx.secret_b).upper()])
        fields[0] = other.encode()
        p.set(b"x-mte-relay", b",".join(fields))

    def relay_missing(rng: random.Random, p: Parts) -> None:
        p.set(b"x-mte-relay", None)

    def relay_twice(rng: random.Random, p: Parts) -> None:
        p.headers.append((b"x-mte-relay", p.get(b"x-mte-relay") or b""))

    def relay_bytes(rng: random.Random, p: Parts) -> None:
        p.set(b"x-mte-relay", damage_bytes(rng, p.get(b"x-mte-relay") or b"")
              .replace(b"\r", b"").replace(b"\n", b""))

    def relay_long(rng: random.Random, p: Parts) -> None:
        p.set(b"x-mte-relay", (p.get(b"x-mte-relay") or b"") + b" " * rng.choice([60, 70, 5000]))

    def eh_flip(rng: random.Random, p: Parts) -> None:
        p.set(b"x-mte-relay-eh", flip_token(rng, (p.get(b"x-mte-relay-eh") or b"").decode()).encode())

    def eh_text(rng: random.Random, p: Parts) -> None:
        token = damage_text(rng, (p.get(b"x-mte-relay-eh") or b"").decode())
        p.set(b"x-mte-relay-eh", token.encode("utf-8", "replace").replace(b"\r", b"")
              .replace(b"\n", b""))

    def eh_missing(rng: random.Random, p: Parts) -> None:
        p.set(b"x-mte-relay-eh", None)

    def eh_twice(rng: random.Random, p: Parts) -> None:
        p.headers.append((b"x-mte-relay-eh", p.get(b"x-mte-relay-eh") or b""))

    def eh_padding(rng: random.Random, p: Parts) -> None:
        token = (p.get(b"x-mte-relay-eh") or b"")
        p.set(b"x-mte-relay-eh", rng.choice([token + b"=", token + b"==", b"", b"=" * 4,
                                             token.replace(b"-", b"+").replace(b"_", b"/"),
                                             b"A" * rng.choice([1, 5, 8191, 20000])]))

    def target_flip(rng: random.Random, p: Parts) -> None:
        p.target = b"/" + flip_token(rng, p.target[1:].decode("latin-1")).encode()

    def target_text(rng: random.Random, p: Parts) -> None:
        p.target = damage_text(rng, p.target.decode("latin-1")).encode("utf-8", "replace")
        p.target = p.target.replace(b" ", b"%20").replace(b"\r", b"").replace(b"\n", b"") or b"/"

    def target_other(rng: random.Random, p: Parts) -> None:
        p.target = rng.choice([b"/", b"/api/fuzz?x=1", b"//x", b"/%00", b"/a/../../etc/passwd",
                               b"/" + b"A" * 20000, b"/\x7f\x80\xb0", b"*", b"http://evil/x",
                               p.target + b"?extra=1", p.target + b"/"])

    def method(rng: random.Random, p: Parts) -> None:
        p.method = rng.choice([b"GET", b"POST", b"DELETE", b"get", b"PROPFIND", b"HEAD",
                               b"OPTIONS", b"TRACE", b"CONNECT", b"G\x00T", b"X" * 300])

    def body_flip(rng: random.Random, p: Parts) -> None:
        p.body = flip_bytes(rng, p.body, rng.randint(1, 3))

    def body_cut(rng: random.Random, p: Parts) -> None:
        cut = rng.choice([1, 15, 16, 17, 65552, len(p.body) // 2])
        p.body = p.body[:max(0, len(p.body) - cut)]

    def body_extend(rng: random.Random, p: Parts) -> None:
        p.body = p.body + rng.randbytes(rng.choice([1, 16, 100, 65552]))

    def body_chunks(rng: random.Random, p: Parts) -> None:
        size = 65552
        pieces = [p.body[i:i + size] for i in range(0, len(p.body), size)]
        if len(pieces) < 2:
            p.body = p.body + p.body
            return
        op = rng.randrange(3)
        if op == 0:
            del pieces[rng.randrange(len(pieces))]
        elif op == 1:
            pieces[0], pieces[1] = pieces[1], pieces[0]
        else:
            pieces.insert(1, pieces[0])
        p.body = b"".join(pieces)

    def body_clear(rng: random.Random, p: Parts) -> None:
        p.body = rng.choice([b"clear body", b"", rng.randbytes(100)])
        if p.framing == "none":
            p.framing = "length"

    def framing(rng: random.Random, p: Parts) -> None:
        p.framing = rng.choice(["chunked", "both", "twice", "none"])
        if rng.random() < 0.3:
            p.length = rng.choice([0, 10**12, 2**63, 64 * 1024 * 1024 + 17])

    def clear_header(rng: random.Random, p: Parts) -> None:
        name, value = rng.choice([
            (b"connection", b"authorization, x-api-key"), (b"connection", b"x-mte-relay"),
            (b"x-mte-response-headers", b"content-type"), (b"x-mte-response-headers", b"*"),
            (b"x-mte-outbound-token", b"nope"), (b"content-type", b"text/plain"),
            (b"transfer-encoding", b"identity"), (b"expect", b"100-continue"),
            (b"x-mte-" + rng.choice([b"foo", b"relay-x", b""]), b"1"),
            (b"x-forwarded-for", b"1.2.3.4"), (b"upgrade", b"websocket"),
            (b"te", b"trailers"), (b"authorization", b"Bearer clear"),
        ])
        p.headers.append((name, value))

    def header_bytes(rng: random.Random, p: Parts) -> None:
        op = rng.randrange(5)
        if op == 0:
            p.headers.append((b"x-bad", rng.choice(mutate.NASTY_BYTES)))
        elif op == 1:
            p.headers.append((rng.choice([b"bad name", b"bad:name", b"\xff", b"", b"a" * 5000]),
                              b"v"))
        elif op == 2:
            p.headers += [(b"x-many-%d" % i, b"v") for i in range(rng.choice([100, 600]))]
        elif op == 3:
            p.headers.append((b"x-huge", b"v" * rng.choice([8000, 70000])))
        else:
            p.headers.append((b"x-fold", b"a\r\n folded"))

    return [("relay-field", relay_field), ("relay-client", relay_client),
            ("relay-missing", relay_missing), ("relay-twice", relay_twice),
            ("relay-bytes", relay_bytes), ("relay-long", relay_long), ("eh-flip", eh_flip),
            ("eh-text", eh_text), ("eh-missing", eh_missing), ("eh-twice", eh_twice),
            ("eh-padding", eh_padding), ("target-flip", target_flip),
            ("target-text", target_text), ("target-other", target_other), ("method", method),
            ("body-flip", body_flip), ("body-cut", body_cut), ("body-extend", body_extend),
            ("body-chunks", body_chunks), ("body-clear", body_clear), ("framing", framing),
            ("clear-header", clear_header), ("header-bytes", header_bytes)]


_PROXY_MUTATORS: dict[int, list] = {}


def proxy(ctx: Context, rng: random.Random, case_id: str) -> Case:
    mutators = _PROXY_MUTATORS.setdefault(id(ctx), _proxy_mutators(ctx))
    port = rng.choice([ctx.balancer, ctx.balancer, *ctx.inbound])
    roll = rng.random()
    big = rng.random() < 0.05
    sealed = _sealed(ctx, rng, case_id, big=big)
    parts = Parts(sealed.method.encode(), sealed.target.encode(),
                  [(n.encode(), v.encode()) for n, v in sealed.headers], sealed.body,
                  "length" if sealed.body or sealed.method in ("POST", "PUT", "PATCH") else "none")
    if roll < 0.06:
        return Case(case_id, "proxy", "valid", port, parts.raw(), sealed.method, sealed=sealed)
    if roll < 0.10:
        other = rng.choice([p for p in ctx.inbound + [ctx.balancer] if p != port])
        return Case(case_id, "proxy", "replay", port, parts.raw(), sealed.method,
                    sealed=sealed, replay_port=other)
    names = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        name, fn = rng.choice(mutators)
        try:
            fn(rng, parts)
        except (ValueError, IndexError, UnicodeError):
            name += "!"  # this mutation does not apply to what earlier ones left
        names.append(name)
    method = parts.method.decode("latin-1")
    return Case(case_id, "proxy", "+".join(sorted(set(names))), port, parts.raw(),
                method if method in ("HEAD",) else "GET", timeout=8)


# ---------------------------------------------------------------- pairing

def pair(ctx: Context, rng: random.Random, case_id: str) -> Case:
    port = rng.choice([ctx.balancer, *ctx.inbound])
    count = rng.choice([1, 1, 2, 3])
    entries = [json.loads(json.dumps(e)) for e in rng.sample(ctx.entries, count)]
    for e in entries:
        e["pairId"] = b64(rng.randbytes(16))
    client = client_id_for(ctx.secret_b)
    headers: list[tuple[str, str | bytes]] = [("x-mte-relay", client),
                                               ("content-type", "application/json"),
                                               ("x-fuzz-case", case_id)]
    kind, body = _pair_mutation(rng, entries)
    method = "POST"
    if kind == "headers":
        op = rng.randrange(6)
        if op == 0:
            headers = headers[1:]
        elif op == 1:
            headers[0] = ("x-mte-relay", damage_text(rng, client).encode("utf-8", "replace")
                          .replace(b"\r", b"").replace(b"\n", b""))
        elif op == 2:
            headers.append(("x-mte-relay", client_id_for(ctx.secret_b)))
        elif op == 3:
            headers[0] = ("x-mte-relay", client_id_for("not-the-relay-secret-0123456789abc"))
        elif op == 4:
            method = rng.choice(["GET", "PUT", "HEAD", "DELETE"])
        else:
            headers[1] = ("content-type", rng.choice(["text/plain", "", "application/json; x"]))
    p = Parts.of(method, "/api/mte-pair" + rng.choice(["", "", "?x=1", "/", "?fuzzsecret=1"]),
                 headers, body)
    if kind == "huge":
        p.length = rng.choice([10**7, 10**9, 2**62])
        p.cut = rng.choice([0, 100, 5000])
        return Case(case_id, "pair", kind, port, p.raw(), method, timeout=5, abort=False)
    return Case(case_id, "pair", kind, port, p.raw(), method, timeout=20)


def _pair_mutation(rng: random.Random, entries: list[dict[str, Any]]) -> tuple[str, bytes]:
    op = rng.randrange(20)
    e = rng.choice(entries)
    d = rng.choice(["c2s", "s2c"])
    if op == 0:
        return "json-truncated", json.dumps(entries).encode()[:rng.randrange(1, 200)]
    if op == 1:
        return "utf8", json.dumps(entries).encode().replace(b'"version"', b'"v\xff\xfe"', 1)
    if op == 2:
        depth = rng.choice([50, 1000, 100000])
        return "nesting", b"[" * depth + b"]" * depth
    if op == 3:
        return "shape", rng.choice([b"{}", b"[]", b"null", b"1", b'"x"', b"[1]", b"[[]]",
                                    b"[null]", json.dumps({"0": e}).encode()])
    if op == 4:
        return "count", json.dumps([e] * 65).encode()
    if op == 5:
        e[rng.choice(["extra", "pairid", "Version"])] = 1
        return "unknown-key", json.dumps(entries).encode()
    if op == 6:
        del e[rng.choice(["version", "pairId", "c2s", "s2c"])]
        return "missing-key", json.dumps(entries).encode()
    if op == 7:
        e["version"] = rng.choice([2, 0, -1, "1", 1.0, True, None, 10**30, [1]])
        body = json.dumps(entries).encode()
        if rng.random() < 0.3:
            body = body.replace(b'"version": 1', rng.choice([b'"version": 1e0', b'"version": 1.0',
                                                             b'"version": 01']), 1)
        return "version", body
    if op == 8:
        e["pairId"] = rng.choice(["A" * 15, "A" * 65, "bad id with space", "é" * 20, 12345,
                                  None, "a+b/c=" * 4, ""])
        return "pair-id", json.dumps(entries).encode()
    if op == 9:
        if len(entries) < 2:
            entries.append(json.loads(json.dumps(e)))
        entries[-1]["pairId"] = entries[0]["pairId"]
        return "duplicate", json.dumps(entries).encode()
    if op in (10, 11):
        field_name = rng.choice(["x25519", "mlkem768", "personalization"])
        e[d][field_name] = damage_text(rng, e[d][field_name])
        return "base64", json.dumps(entries, ensure_ascii=False).encode("utf-8", "replace")
    if op == 12:
        raw = mutate.unb64(e[d]["x25519"])
        e[d]["x25519"] = rng.choice([b64(raw[:31]), b64(raw + b"\0"), b64(b"\0" * 32),
                                     b64(b"\x01" + b"\0" * 31), e[d]["x25519"] + "=",
                                     b64(bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"))])
        return "x25519", json.dumps(entries).encode()
    if op == 13:
        raw = mutate.unb64(e[d]["mlkem768"])
        e[d]["mlkem768"] = rng.choice([b64(b"\xff\xff\xff" + raw[3:]), b64(raw[:1183]),
                                       b64(raw + b"\0"), b64(b"\xff" * 1184)])
        return "mlkem", json.dumps(entries).encode()
    if op == 14:
        e[d]["personalization"] = b64(b"\0" * rng.choice([0, 15, 65, 1000]))
        return "personalization", json.dumps(entries).encode()
    if op == 15:
        e[d] = rng.choice([None, [], "x", {}, {"x25519": e[d]["x25519"]}])
        return "direction", json.dumps(entries).encode()
    if op == 16:
        return "huge", b" " * 1000
    if op == 17:
        return "headers", json.dumps(entries).encode()
    if op == 18:
        body = json.dumps(entries).encode()
        return "bytes", damage_bytes(rng, body)
    e[d]["extra"] = "x"
    return "unknown-key", json.dumps(entries).encode()


# ---------------------------------------------------------------- outbound entry

_UPSTREAM_ANY = ["", " ", "127.0.0.1", "http://", "http:///", "ftp://127.0.0.1", "http://[::1",
                 "http://127.0.0.1:0", "http://127.0.0.1:65536", "http://127.0.0.1:99999999",
                 "http://user:pw@127.0.0.1:1", "http://127.0.0.1:1/path?q#f",
                 "http://" + "a" * 64 + ".example", "http://" + ("a" * 63 + ".") * 4 + "example",
                 "http://a..b", "http://-a-.example", "http://xn--zz.example", "http://é.example",
                 "http://127.0.0.1:1", "http://localhost:1", "https://127.0.0.1:1",
                 "http://[::1]:1", "http://0x7f.1:1", "http://127.1:1", "*", "http://*",
                 "javascript:alert(1)", "http://127.0.0.1:1\r\nx: y", "\x00"]
#: Only refused before any DNS lookup by an allow-list: sent to A1 only (loopback only).
_UPSTREAM_NAMED = ["http://evil.example", "https://remote.example:8443", "http://example.com."]


def outbound(ctx: Context, rng: random.Random, case_id: str) -> Case:
    allow_list = rng.random() < 0.5
    port = ctx.outbound[0] if allow_list else ctx.outbound[1]
    method = rng.choice(["GET", "POST", "PUT", "DELETE"])
    body = rng.randbytes(rng.choice([0, 10, 1000])) if method in ("POST", "PUT") else b""
    headers: list[tuple[str, str | bytes]] = [
        ("x-mte-outbound-token", ctx.token),
        ("x-mte-upstream", f"http://127.0.0.1:{ctx.balancer}"),
        ("x-fuzz-case", case_id), ("content-type", "application/octet-stream")]
    p = Parts.of(method, f"/api/out/{rng.randrange(50)}?case={case_id}", headers, body)
    roll = rng.randrange(12)
    kind = "valid"
    if roll == 0:
        kind = "token"
        p.set(b"x-mte-outbound-token", rng.choice(
            [None, b"", b"wrong", ctx.token.encode()[:-1], ctx.token.upper().encode(),
             ctx.token.encode() + b" x", b"\xff" * 30]))
    elif roll == 1:
        kind = "token-twice"
        p.headers.append((b"x-mte-outbound-token", rng.choice([ctx.token.encode(), b"x"])))
    elif roll in (2, 3, 4):
        kind = "upstream"
        choices = _UPSTREAM_ANY + (_UPSTREAM_NAMED if allow_list else [])
        value = rng.choice(choices).encode("utf-8")
        p.set(b"x-mte-upstream", value.replace(b"\r\n", b"") if rng.random() < 0.5 else value)
    elif roll == 5:
        kind = "upstream-twice"
        p.headers.append((b"x-mte-upstream", f"http://127.0.0.1:{ctx.balancer}".encode()))
    elif roll == 6:
        kind = "upstream-missing"
        p.set(b"x-mte-upstream", None)
    elif roll == 7:
        kind = "options"
        name = rng.choice([b"x-mte-encode-type", b"x-mte-encode-url", b"x-mte-encode-headers"])
        p.headers.append((name, rng.choice([b"MTE", b"MKE", b"mke", b"", b"true", b"false",
                                            b"1", b"x", b"authorization", b",", b"*"])))
    elif roll == 8:
        kind = "path"
        p.target = rng.choice([b"/\x7f\x90", b"/%00", b"/" + b"a" * 20000, b"*",
                               b"http://x/y", b"/a b", b"/\xc3\xa9", b"/.."])
    elif roll == 9:
        kind = "headers"
        p.headers.append(rng.choice([(b"connection", b"x-mte-upstream"),
                                     (b"x-mte-relay", b"x"), (b"x-mte-response-headers", b"x"),
                                     (b"transfer-encoding", b"chunked"), (b"x-bad", b"\x00")]))
    elif roll == 10:
        kind = "framing"
        p.framing = rng.choice(["chunked", "both", "twice"])
    return Case(case_id, "outbound", kind, port, p.raw(), method, timeout=15)


# ---------------------------------------------------------------- clear routes

def passthrough(ctx: Context, rng: random.Random, case_id: str) -> Case:
    port = rng.choice([ctx.balancer, *ctx.inbound])
    method = rng.choice(["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD"])
    body = rng.randbytes(rng.choice([0, 5, 500])) if method in ("POST", "PUT") else b""
    path = rng.choice([b"/public-api/x", b"/public-api/", b"/public-api/a/b/c",
                       b"/public-api/\x7f\x80\x90\xb0", b"/public-api/%00%ff", b"/public-api/..",
                       b"/public-api/" + b"z" * 9000, b"/public-api/a;b", b"/public-api//x"])
    p = Parts(method.encode(), path + b"?case=" + case_id.encode() + b"&fuzzsecret=1",
              [(b"x-fuzz-case", case_id.encode())], body,
              "length" if body or method in ("POST", "PUT") else "none")
    kind = "plain"
    if rng.random() < 0.5:
        kind = "headers"
        p.headers.append(rng.choice([(b"connection", b"x-fuzz-case"), (b"x-mte-relay", b"junk"),
                                     (b"x-mte-outbound-token", b"bad"), (b"te", b"trailers"),
                                     (b"transfer-encoding", b"gzip"), (b"x-bad", b"\x00\x01"),
                                     (b"host", b"evil.example")]))
    if rng.random() < 0.2:
        kind += "+framing"
        p.framing = rng.choice(["chunked", "both", "twice"])
    return Case(case_id, "passthrough", kind, port, p.raw(), method)


def echo(ctx: Context, rng: random.Random, case_id: str) -> Case:
    port = rng.choice([ctx.balancer, *ctx.inbound, *ctx.outbound])
    msg = rng.choice([b"hi", b"", b"%00", b"%ff%fe", b"\xc3\xa9", b"a" * 10000, b"a/b/c",
                      b"<script>", b"%2e%2e", b"\x7f\x80"])
    target = rng.choice([b"/api/mte-echo", b"/api/mte-echo/" + msg, b"/api/mte-echo?msg=" + msg,
                         b"/api/mte-echo/?msg=" + msg + b"&msg=2", b"/api/mte-echo//" + msg,
                         b"/api/mte-echoX", b"/API/MTE-ECHO"])
    method = rng.choice([b"GET", b"GET", b"HEAD", b"POST", b"DELETE", b"OPTIONS"])
    p = Parts(method, target, [(b"x-fuzz-case", case_id.encode())])
    if rng.random() < 0.3:
        p.headers.append(rng.choice([(b"x-mte-relay", b"x"), (b"origin", b"http://evil"),
                                     (b"access-control-request-method", b"DELETE")]))
    return Case(case_id, "echo", "mutated", port, p.raw(), method.decode())


def relay_head(ctx: Context, rng: random.Random, case_id: str) -> Case:
    port = rng.choice([ctx.balancer, *ctx.inbound])
    good = client_id_for(ctx.secret_b)
    value = rng.choice([None, good, good.upper(), good[:-1], good + "0", " " + good + "\t",
                        client_id_for("not-the-relay-secret-0123456789abc"), "", "x" * 5000,
                        good.replace("-", "")])
    headers = [(b"x-fuzz-case", case_id.encode())]
    if value is not None:
        headers.append((b"x-mte-relay", value.encode()))
        if rng.random() < 0.2:
            headers.append((b"x-mte-relay", good.encode()))
    method = rng.choice([b"HEAD", b"HEAD", b"GET", b"POST", b"PUT"])
    query = rng.choice([b"", b"?fuzzsecret=leak", b"?a=" + b"b" * 3000])
    p = Parts(method, b"/api/mte-relay" + query, headers)
    return Case(case_id, "relay-head", "mutated", port, p.raw(), method.decode())


# ---------------------------------------------------------------- socket level

_RAW = [
    b"\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
    b"GET / HTTP/0.9\r\n\r\n", b"GET /  HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://evil.example/ HTTP/1.1\r\nHost: x\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
    b"GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n: empty\r\n\r\n",
    b"GET / HTTP/1.1\nHost: x\n\n", b"GET / HTTP/1.1\rHost: x\r\r",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;a=b\r\nx\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /api/mte-echo HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(2000)) + b"\r\n",
    b"\xff\xfe\xfd" * 100, b"\x00" * 1000, b"G\x00ET / HTTP/1.1\r\n\r\n",
    b"GET /api/mte-echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
]


def raw(ctx: Context, rng: random.Random, case_id: str) -> Case:
    port = rng.choice(ctx.every)
    data = rng.choice(_RAW)
    kind = "template"
    if rng.random() < 0.5:
        data = damage_bytes(rng, data)
        kind = "damaged"
    if rng.random() < 0.1:
        data = rng.randbytes(rng.randint(1, 2000))
        kind = "random"
    # Half the time the client then half-closes (EOF after its bytes), else it waits 1 s.
    half_close = rng.random() < 0.5
    return Case(case_id, "raw", kind + ("+eof" if half_close else ""), port, data,
                timeout=1.0, extra={"half_close": half_close})


def abort(ctx: Context, rng: random.Random, case_id: str) -> Case:
    """A request whose body stops part way (the client hangs up): nothing may reach the upstream."""
    target = rng.choice(["proxy", "proxy", "outbound", "pair", "passthrough"])
    if target == "proxy":
        sealed = _sealed(ctx, rng, case_id, big=True)
        port = rng.choice([ctx.balancer, *ctx.inbound])
        p = Parts(sealed.method.encode(), sealed.target.encode(),
                  [(n.encode(), v.encode()) for n, v in sealed.headers], sealed.body)
        if not p.body:
            p.body = rng.randbytes(100)
    elif target == "outbound":
        port = rng.choice(ctx.outbound)
        p = Parts.of("POST", f"/api/out?case={case_id}",
                     [("x-mte-outbound-token", ctx.token),
                      ("x-mte-upstream", f"http://127.0.0.1:{ctx.balancer}"),
                      ("x-fuzz-case", case_id)], rng.randbytes(rng.choice([100, 200000])))
        if rng.random() < 0.5:
            p.framing = "chunked"
    elif target == "pair":
        port = rng.choice(ctx.inbound)
        p = Parts.of("POST", "/api/mte-pair", [("x-mte-relay", client_id_for(ctx.secret_b)),
                                               ("x-fuzz-case", case_id)],
                     json.dumps(ctx.entries[:2]).encode())
    else:
        port = rng.choice(ctx.inbound)
        p = Parts.of("POST", f"/public-api/up?case={case_id}", [("x-fuzz-case", case_id)],
                     rng.randbytes(5000))
    raw_len = len(p.raw())
    head_len = raw_len - len(p.body) if p.framing != "chunked" else raw_len - len(p.body) - 12
    p.cut = rng.randrange(0, max(1, len(p.body)))
    data = p.raw()
    hang = rng.random() < 0.5
    kind = f"{target}-{'hangup' if hang else 'stall'}"
    del head_len
    return Case(case_id, "abort", kind, port, data, p.method.decode(),
                abort=hang, timeout=0.3)


def slow(ctx: Context, rng: random.Random, case_id: str) -> Case:
    """A slow client: a valid request dribbled out in pieces with pauses."""
    sealed = _sealed(ctx, rng, case_id)
    port = rng.choice([ctx.balancer, *ctx.inbound])
    data = Parts(sealed.method.encode(), sealed.target.encode(),
                 [(n.encode(), v.encode()) for n, v in sealed.headers], sealed.body,
                 "length" if sealed.body or sealed.method in ("POST", "PUT", "PATCH")
                 else "none").raw()
    cuts = sorted(rng.sample(range(1, len(data)), min(4, len(data) - 1)))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
    return Case(case_id, "slow", "valid-dribbled", port, pieces, sealed.method,
                pause=rng.choice([0.05, 0.1, 0.3]), timeout=15, sealed=sealed)


GENERATORS: dict[str, Callable[[Context, random.Random, str], Case]] = {
    "proxy": proxy, "pair": pair, "outbound": outbound, "raw": raw, "passthrough": passthrough,
    "echo": echo, "relay-head": relay_head, "abort": abort, "slow": slow,
}
