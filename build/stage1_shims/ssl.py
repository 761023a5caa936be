"""Stage 1 carries no OpenSSL (5 MB, a third of a flash part). This placeholder satisfies
`import ssl` in libraries that need it only for what stage 1 never runs (pyroute2's network
probe, http.client's HTTPS, asyncio's TLS transports): it defines every name they touch
(the stdlib's asyncio and http.client, tested against this list), and any use of TLS fails
loudly. asyncio asks `isinstance(sock, ssl.SSLSocket)` of every socket it sends on."""

CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED = 0, 1, 2
PROTOCOL_TLS_CLIENT = 16


class SSLError(OSError):
    pass


class SSLWantReadError(SSLError):
    pass


class SSLWantWriteError(SSLError):
    pass


class SSLSyscallError(SSLError):
    pass


class SSLZeroReturnError(SSLError):
    pass


class CertificateError(ValueError):
    pass


class _NoTLS:
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise SSLError("stage 1 has no TLS: serve the payload over http://")


class SSLContext(_NoTLS):
    pass


class SSLSocket(_NoTLS):
    pass


class SSLObject(_NoTLS):
    pass


class MemoryBIO(_NoTLS):
    pass


def create_default_context(*args: object, **kwargs: object) -> SSLContext:
    return SSLContext()


_create_default_https_context = create_default_context
