# TLS for edgefw/mqtt.py: wraps a connected socket, verifying the broker's certificate
# against the CA file, always (MicroPython has no system certificate store to fall back
# on), or not at all when the caller asked for `insecure` (encrypted, the broker not
# verified). Imported by the client only when a connection uses TLS. The handshake
# blocks for up to timeout_ms, once per connection.
_VERIFY_FAILED = -9984  # mbedTLS MBEDTLS_ERR_X509_CERT_VERIFY_FAILED


def der(data):
    """CA data as DER (MicroPython's mbedTLS takes DER only): the first PEM block decoded."""
    if not data.startswith(b"-----BEGIN"):
        return data
    from binascii import a2b_base64
    lines = data.split(b"\n")
    b64 = b""
    for ln in lines[1:]:
        ln = ln.strip()
        if ln.startswith(b"-----END"):
            break
        b64 += ln
    return a2b_base64(b64)


def handshake_error(e, ca):
    """One line for a failed handshake. mbedTLS raises ValueError("...not correctly signed
    by the trusted CA") or OSError(-9984); CPython ssl.SSLCertVerificationError."""
    code = e.args[0] if e.args else None
    text = str(code).strip() if isinstance(code, str) else repr(e)
    if code == _VERIFY_FAILED or type(e).__name__ == "SSLCertVerificationError" \
            or "certificate" in text.lower():
        return "TLS: the broker's certificate was refused (not signed by the CA file %s, " \
               "or not for this host): %s" % (ca, text)
    return "TLS handshake failed: %s" % text


def wrap(sock, host, ca, insecure, timeout_ms):
    """Wrap the connected socket (blocking handshake, then non-blocking again):
    (TLS socket, None), or (None, what went wrong). ca: the CA file (checked by the
    caller to be set unless insecure)."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if insecure:
        if hasattr(ctx, "check_hostname"):
            ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            with open(ca, "rb") as f:
                data = f.read()
        except OSError as e:
            return None, "TLS setup: CA file %s cannot be read (%r)" % (ca, e)
        try:
            ctx.load_verify_locations(cadata=der(data))
        except Exception as e:  # not a certificate (mbedTLS: ValueError, CPython: SSLError)
            return None, "TLS setup: CA file %s is not a certificate (%s)" % (
                ca, str(e).strip() or repr(e))
    sock.settimeout(timeout_ms / 1000)
    try:
        sock = ctx.wrap_socket(sock, server_hostname=host)
    except (OSError, ValueError) as e:  # refused certificate, handshake timeout
        return None, handshake_error(e, ca)
    sock.setblocking(False)
    return sock, None
