"""Schemathesis hooks for .ci/schemathesis.

Two rules of the API cannot be written in a schema, and both have documented answers:

- The callback URL policy refuses addresses that are not globally routable, which depends on DNS
  and on where the client is (a 400 that says why). In schema-valid cases only, a generated
  string `callback_url` is replaced by a loopback URL this local run may use.
- An `Idempotency-Key` already used with a different body is a 422: the key's contract, not the
  body's shape. The stateful phase reuses generated header values across different bodies, so in
  schema-valid cases the key is suffixed with a digest of the body: the same key and body still
  replay, and different bodies get different keys.

Schema-invalid cases are sent as generated.
"""

import hashlib
import json

import schemathesis

CALLBACK_URL = "http://127.0.0.1:9/schemathesis"
KEY_HEADER = "idempotency-key"


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return
    if isinstance(case.body, dict) and isinstance(case.body.get("callback_url"), str):
        case.body["callback_url"] = CALLBACK_URL
    for name, value in list((case.headers or {}).items()):
        if name.lower() == KEY_HEADER and isinstance(value, str):
            digest = hashlib.sha256(json.dumps(case.body, sort_keys=True).encode()).hexdigest()[:16]
            case.headers[name] = f"{value[:200]}-{digest}"
