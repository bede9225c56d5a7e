#!/usr/bin/env python3
"""The stand-ins of tests/kms_servers.py (Vault transit, Azure Key Vault, ...) over HTTPS,
with a certificate for 127.0.0.1 issued by a CA made here (python `cryptography`), as a
self-hosted Vault on an internal CA would be. Writes the CA certificate to the path given
as the first argument, prints one JSON line (`base`, and the stand-ins' details), then
serves until stdin closes.
"""

import datetime
import ipaddress
import json
import os
import ssl
import sys
import tempfile
import threading
from http.server import ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kms_servers  # noqa: E402
import kms_vault_server  # noqa: E402


def main(ca_path):
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "strongroom test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=7))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    with open(ca_path, "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with tempfile.TemporaryDirectory() as d:
        chain = os.path.join(d, "server.pem")
        with open(chain, "wb") as f:
            f.write(leaf.public_bytes(serialization.Encoding.PEM))
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), kms_servers.Handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    httpd.base = f"https://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print(json.dumps({"base": httpd.base, "vault": kms_vault_server.info(httpd.base)}), flush=True)
    sys.stdin.read()
    httpd.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
