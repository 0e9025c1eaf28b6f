"""``tinct serve``: the HTTP API and the console on uvicorn.

    TINCT_API_TOKEN=... tinct serve --host 0.0.0.0 --port 8000
    tinct serve --insecure-local                 # loopback only, no token: a laptop trying Tinct out

It refuses to start without a token (``TINCT_API_TOKEN`` or ``TINCT_API_TOKENS_FILE``) unless it is bound to a
loopback address and ``--insecure-local`` says that is meant. Its own log lines name tokens, never their values;
uvicorn's access log is off unless asked for (``--access-log``), since a console polls and streams all day.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys

EXIT_OK, EXIT_USAGE = 0, 2
# Longer than clients and proxies keep an idle connection (httpx 5 s, nginx's upstream pool and AWS's load balancers
# 60 s), so that the client side always closes first: at equal timeouts (uvicorn's own default is 5 s, httpx's too)
# a request sent as the server closes its connection is reset, and a pooled client meets that under a burst.
KEEP_ALIVE_S = 75
log = logging.getLogger("tinct.api")


def add_serve_command(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="the HTTP API (/api/v1) and the web console (/)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    serve.add_argument("--insecure-local", action="store_true",
                       help="allow running without any token, on a loopback address only")
    serve.add_argument("--access-log", action="store_true", help="log every request (paths only, never headers)")
    serve.add_argument("--keep-alive", type=int, default=KEEP_ALIVE_S, metavar="SECONDS",
                       help="how long an idle client connection stays open (default: %(default)s)")
    serve.set_defaults(run=_serve)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from worker.api.auth import TokenConfigError, load_principals
    from worker.settings import Settings

    def error(message: str) -> int:
        print(f"{parser.prog} serve: error: {message}", file=sys.stderr)
        return EXIT_USAGE

    if args.keep_alive <= 0:
        return error(f"--keep-alive: expected seconds above 0, got {args.keep_alive}")
    try:
        settings = Settings.from_env()
        principals = load_principals(settings)
    except (TokenConfigError, ValueError) as exc:
        return error(str(exc))
    if not principals:
        if not args.insecure_local:
            return error("no token: set TINCT_API_TOKEN or TINCT_API_TOKENS_FILE (or, on a loopback address only, "
                         "pass --insecure-local)")
        if not is_loopback(args.host):
            return error(f"--insecure-local serves without a token, so only on a loopback address, not {args.host}")
    import uvicorn

    from worker.api.app import create_app

    app = create_app(settings, principals=principals, insecure_local=args.insecure_local and not principals)
    names = ", ".join(p.name for p in principals) or "none (--insecure-local)"
    # uvicorn's own start-up lines repeat ours; its warnings and errors (a port in use) still show.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    log.info("tinct serve: http://%s:%d/ (API under /api/v1), tokens: %s", args.host, args.port, names)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_config=None, access_log=args.access_log,
                            server_header=False, timeout_graceful_shutdown=5, timeout_keep_alive=args.keep_alive)
    uvicorn.Server(config).run()
    return EXIT_OK
