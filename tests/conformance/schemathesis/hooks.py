"""Schemathesis hooks for the served-domain pass of tests/conformance/schemathesis.rs.

The agent under test serves a file domain, which refuses `wipe` on a volume creation by
design (removing a file never shows its blocks to another file): a block-domain field the
schema cannot tie to the domain's kind. A valid `wipe` is left out of the bodies sent to that
operation; an invalid one (a negative case) stays, to be refused.
"""
import schemathesis


@schemathesis.hook("map_body").apply_to(name="POST /v1/domains/{vg}/volumes")
def no_wipe_on_a_file_domain(ctx, body):
    if isinstance(body, dict) and body.get("wipe") in ("zero", "none"):
        del body["wipe"]
    return body
