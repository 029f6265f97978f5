"""Schemathesis hooks for .ci/schemathesis.

One rule of the API cannot be written in a schema: the callback URL policy (it refuses addresses
that are not globally routable, which depends on DNS and on where the client is). A schema-valid
`callback_url` that the policy refuses gets a documented 400. So in schema-valid cases only, a
generated string URL is replaced by a loopback URL this local run may use; schema-invalid cases
are sent as generated.
"""

import schemathesis

CALLBACK_URL = "http://127.0.0.1:9/schemathesis"


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    meta = case.meta
    positive = meta is not None and meta.generation.mode.is_positive
    if positive and isinstance(case.body, dict) and isinstance(case.body.get("callback_url"), str):
        case.body["callback_url"] = CALLBACK_URL
