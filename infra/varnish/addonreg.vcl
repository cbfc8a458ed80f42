# addonreg's edge: Varnish in front of the gateways, purged by surrogate key
# (xkey) by the edge purger (docs/edge.md). Backends come from backends.vcl
# on the vcl_path, written by whoever starts Varnish (infra/local/up, the
# tests, harness/src/varnish.rs): it defines the gateways' backends and a
#   sub vcl_init { gateways.add_backend(...); ... }
# which Varnish runs after the one here.
vcl 4.1;

import directors;
import xkey;

# Who may purge: the purger runs on this machine (or the edge's network).
acl purgers {
    "127.0.0.1";
    "::1";
}

sub vcl_init {
    new gateways = directors.round_robin();
}

include "backends.vcl";

sub vcl_recv {
    # PURGE, or POST to /__purge__ for HTTP clients that only send the
    # standard methods (the purger's).
    if (req.method == "PURGE" || (req.method == "POST" && req.url == "/__purge__")) {
        if (client.ip !~ purgers) {
            return (synth(403, "Forbidden"));
        }
        if (!req.http.xkey-purge) {
            return (synth(400, "xkey-purge header required"));
        }
        # Hard purge: a soft one would serve the old answer while refetching.
        set req.http.x-purged = xkey.purge(req.http.xkey-purge);
        return (synth(200, "Purged " + req.http.x-purged));
    }
    set req.backend_hint = gateways.backend();
    # Only the records and listings are cached (their answers carry keys);
    # lookups (POST), receipts and everything else go to a gateway.
    if ((req.method != "GET" && req.method != "HEAD") || req.url !~ "^/v1/addons/") {
        return (pass);
    }
    unset req.http.Cookie;
    unset req.http.Authorization;
    return (hash);
}

sub vcl_backend_response {
    # An answer without surrogate keys could never be purged: don't keep it.
    if (!beresp.http.xkey) {
        set beresp.uncacheable = true;
        set beresp.ttl = 0s;
        return (deliver);
    }
    # Every kept answer can also be purged all at once (purge_all).
    set beresp.http.xkey = beresp.http.xkey + " addonreg-all";
    # No grace: after a purge the edge waits for a fresh answer rather
    # than serve the old one meanwhile.
    set beresp.grace = 0s;
}

sub vcl_deliver {
    # Edge internals stay at the edge.
    unset resp.http.xkey;
    unset resp.http.surrogate-key;
    unset resp.http.cache-tag;
    if (obj.hits > 0) {
        set resp.http.x-edge-cache = "hit";
    } else {
        set resp.http.x-edge-cache = "miss";
    }
}
