"""Stage 1 carries no OpenSSL (5 MB, a third of a flash part). This placeholder satisfies
`import ssl` in libraries that need it only for what stage 1 never runs (pyroute2's network
probe; http.client's HTTPS). Any use of TLS fails loudly."""

CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED = 0, 1, 2
PROTOCOL_TLS_CLIENT = 16


class SSLError(OSError):
    pass


class SSLWantReadError(SSLError):  # asyncio.sslproto names these at import
    pass


class SSLWantWriteError(SSLError):
    pass


class SSLSyscallError(SSLError):
    pass


class SSLZeroReturnError(SSLError):
    pass


class SSLContext:
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise SSLError("stage 1 has no TLS: serve the payload over http://")


def create_default_context(*args: object, **kwargs: object) -> SSLContext:
    return SSLContext()
