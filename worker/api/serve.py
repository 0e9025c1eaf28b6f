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
log = logging.getLogger("tinct.api")


def add_serve_command(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="the HTTP API (/api/v1) and the web console (/)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    serve.add_argument("--insecure-local", action="store_true",
                       help="allow running without any token, on a loopback address only")
    serve.add_argument("--access-log", action="store_true", help="log every request (paths only, never headers)")
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
                            server_header=False, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run()
    return EXIT_OK
