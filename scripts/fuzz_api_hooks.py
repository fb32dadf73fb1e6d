"""Schemathesis hooks for scripts/fuzz-api.

Long polls are bounded by the server at 30 s (`waitMs` above that waits 30 s), which is
valid input but would spend the fuzz run's time budget waiting: every generated
`waitMs` above 100 ms is sent as 100 ms. Nothing else is changed.
"""

import schemathesis

WAIT_MS_SENT_AT_MOST = 100


@schemathesis.hook
def before_call(context, case, **kwargs):
    body = case.body
    if isinstance(body, dict):
        wait = body.get("waitMs")
        if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait > WAIT_MS_SENT_AT_MOST:
            body["waitMs"] = WAIT_MS_SENT_AT_MOST
