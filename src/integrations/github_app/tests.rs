//! Unit tests of the module above.

use super::*;

/// A PKCS#1 RSA-2048 key (`openssl genrsa -traditional 2048`); a test key only.
const PKCS1_KEY: &str = "\
-----BEGIN RSA PRIVATE KEY-----\n\
MIIEogIBAAKCAQEAn6dfekzA1tKDEipKCaPLNEfgEAshV9eBKI5ce7QAB4O2jlAF\n\
DBo1W5k9CYZGpkkrOEmaxbTYgEf7DYXYV0esJNOTAFdOQASJMVyP7qLFPh6JVfrf\n\
VYp+3e3KBzCaoURM9atxJkP+TGOkKDwkeMXPsnlqHSZREPNuEea5PK/WtFeqj+zI\n\
NbF+7+cMCjJaoxN4QTk6mbR4MjZNd+guUZhpVFlW5FRRAyAqdJxAwFcjY14QbTIj\n\
3QaPX96KvtKC9Fhd30tOr4nrjHSWQ1Lc/yQuu8Kx6UIMS3upItxk/KwmlbLGB37u\n\
XW3whOs+GZr3+z0oGmC7d4rc1z2d5ykSEAc5hwIDAQABAoIBAENetnx+PPWpuWOF\n\
8t4kfxAdsGA0wio2Jyt8/2u35jdFjlh5Tdfwi0mO3WHShqeOwq0q6iO5j456UWdA\n\
bq1N8kdL/IEtVjjPcTEiNR5nE0KGUj+08F9BZQ2zVQg5q1aX4r3cTY/vKzUC6veL\n\
gXxxRJa0g2GvlI/JmU32hX4lWT2aAgcSBLMr8koe8rOrL1Q3h/amIqhZQLTmW4qU\n\
LzpHGSNzr+DX8UxGFdOG86/e9H/nTXPHWnXxMJzaJBhCHECc71FJ7B+ebvJcKWQD\n\
5NkfdnHCbmLNnyDd0fNkGtiQ1ULgdpX+avN1pjuY4IK7UzhCDkeRi8/BN5g9lBh8\n\
PW1Cd5kCgYEA0UwJWHaN3lmLZVuc26rVkkTJkC5fHIKKpsdLeubu6STzsDt3wffZ\n\
uu2ETFmZ7/wUMaIWl2EQPIqQxJO3IrC+cD4dL76YF1I5HT39kiBzmBVyv748mIor\n\
ypAcT2/y9C0MbJ2U49wb3Tt6HU5IQqPpNrPFP1JdlvUB+PXSvBQurHsCgYEAw0d/\n\
ibqiYyFK+MadsDjWfNqG9mehqZKOkjIXVDk3yPB9GuASSznTGlJGkg635wRHRmof\n\
7NF2WdAC2V9vM7HP+IOAEYqaspu3RI0OMPzFmw3L52spksLi2jh1NkkDFlN0OmFc\n\
XUzWbJ+C/jIMcIdxW0HSbjOW7/wMhgPIfjNQd2UCgYB93+QS/yItot8SM3nwJxtR\n\
X+t1ul3bcKtgyKWdofv33hBtYiaRUrXxFV4m6RCK46llfF1n56lzL8cHYuuWgoPW\n\
T5UQHOmtxPaynpC9bKT4x5V+ujQJbbgOmINeRy7wKZO6Uz+zlrJvaJD1xRnyclAV\n\
ZSLxBWFiI7Ju/7EhCmZTtwKBgC+C0MPotaOasQvv/uOmIIFGBbojopCISMnHCCgE\n\
t87avAVy6OCGlBb+V48np5S8VL8MCPJsT/gwBNFwR7TzGR9klx8tcs/r1N4H16ER\n\
jt5Xr/mA+B9t7RWc0N/BSc//w/KER52nmS/aa1t/P8mNGoZScGlBggKnd0CP4RLb\n\
V0OFAoGAORoB71KVMHFFoL8t7P93h/vpBYu2qMvqvY60HG+72YJTH6JfANNgKZds\n\
i2wzZk4d50TJuSfjP4+TeJmcNwYK+Xu0iI+3UqqWATg0ad7Aa/smlNhbe21Zxafl\n\
9PQDuj+qjVk03+YS2d/FWauFaaX3tRFn1CimqBdwy57Z1PA6G/w=\n\
-----END RSA PRIVATE KEY-----\n";
/// A PKCS#8 RSA-2048 key (`openssl genrsa 2048 | openssl pkcs8 -topk8 -nocrypt`); a test key only.
const PKCS8_KEY: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCunvh/3DJT/TgY\n\
uNNzg3c3DWOeC9/kcnjEw2xzvQFQ70+KxDdl6Uc0PTKoOYLl2Qd7kpEUncfYz4ka\n\
G+s8STMaFUBRcoMHzAepO5s09WaJQSSBSaq+cIAKtLfmyzXyEB3GN0KTrSNaKNC8\n\
nxPnjYC9lHoam/rquQ7zfWbmegZGnPKkVoFENjsX50pBIZRvMmEgvWpTOU/B7SRN\n\
DM23qBS8ztYxFy20mdf5gwm4Ol8EJBHg21ry840xF2V1nSOMdClQJmusR6CIXdvW\n\
CBYdxbFm7yX8Z0z8DoKa6Ijxxekl1fJKcqOamNG79AC+pNTuL6UYniSirHhi33K2\n\
RW8jNixPAgMBAAECggEAVgofUETLiYW9s7Sx/3s57ObMfE3GijX7Gpxd3iM1OE9K\n\
BopK74yDWJKE2M3JmP4YSUN898cMduA/Yh16iVBZ/RKWh+sf8+IMrk6f2XbHCH8Q\n\
ASIunroo5N2JtY7QLE7TlNyakdAgGKb+vsm1EYUv93lmtqC/gBMh8kiKQKrEV9rh\n\
PJ4YfTa7Gcj09gh7uZAqyr03lS4xTPTGJvlWlRNqI5/aKivNJggYakK/eQG3jebH\n\
Ls509m/l6sAN0GkJYFN1is/c404yVRHVJRUrfv0zbsy8NjeQD6vuJi3N635JqqR1\n\
8NyacHGpDUaQVdzb/LsIVo59uP7dW23vWXhjS6zhrQKBgQDmCZ3RW7wizw1Nq2eO\n\
MqMPn8wokHKbOsR2UIufXEyqbge8dvqwZfeoGJ5EtdiGIgAHo9DFiez3S+7xlLdG\n\
cScfvipt+9gs3SasLb0R09eLlNEwq0KXo2HiYtyjSl4MGpH7p+kfAp+QW3rDliAF\n\
uw8cbaERAj6qljEbh4VG2V3KEwKBgQDCVDmWjHQVRp6P4A7YeyJ6nzLfYb/1c4yH\n\
eaUNyUegNVp4wtgQ85jNC0EjZkFCcuM3wlR+Ah7IQ101I2jC0bdv7HgGBRyAmdMd\n\
s56NGesFVjBHfyp8S9PRejNB+4SRlX5IkuxNvKqmxQ1tl/lUQ0uvKh6vLYTb66kV\n\
DMAcligcVQKBgQDJrESf9zzJh5yyK0NudxZd7EqghYL0dGEpGRRPciwEftJpeCXv\n\
4HVu+aZHtuVNMyGzkPrHNFR7uiaRxT+okisquR2ZruGm83ukF7Vam86soJuFf5+y\n\
MZrvTp0Ay4IIOoMhjePjO/mIJatLLaKFY6mr0rESqFUoWORUrks6Afcn4QKBgH9z\n\
zB1gWxZFLePBGRuEjxWLaks2CjdKpKWJ8+X52F9L/t1rNVjQ26vHsN4tx6l0PnAo\n\
pU/LxjKkc/JRGfmEoGHo3sNcANibiupVDy0ODaV/ZMTPs6a3+OHP2uRwuP7e5Gdm\n\
7VMC5Y3hebAiV6WbSX1GC7/rA9NVWZzzsuBM31vNAoGBAIRObShuF9tUpcPBO/jO\n\
avg9I4WUqhPczQZ032UTG38MZ7Bj1q+YRu1DO7LaTXE5CczHbJwyAV9jqJKznXd5\n\
IPdAPBx2uW+o/gFoi+hmH0V5ovQhlom0OA4G7QuVwgVyc3egW0k1/Wp4r6oZ1pPK\n\
Ja80e0xAGq5pWQFpPTGD4n42\n\
-----END PRIVATE KEY-----\n";
/// A PKCS#8 P-256 key: not RSA.
const EC_KEY: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgLgLtNh538MpIdXxS\n\
HZ+VOKW3xxAw6HcykZUn0aZReo2hRANCAARf/N7IqLNL75tZg5MGHFUqslJiYuLP\n\
+HV2uk6UZQCSvK08DyB8KDpThNOhQwLBmCs6yuIyWlbjuWxCunslTjvJ\n\
-----END PRIVATE KEY-----\n";
/// A PKCS#1 RSA-1024 key: too short to be a GitHub App's.
const RSA_1024_KEY: &str = "\
-----BEGIN RSA PRIVATE KEY-----\n\
MIICXAIBAAKBgQCsh94Sh+oHVKLtPMrHy/2/D7nFC+E6V54gPA/3BwRow+iweVlq\n\
4K7aEdsYB8Xmnv0sv5EIbStqo3Z2GEBzNIQHw8YMLpm8uWcrxEewlhE61vtgYT7e\n\
hO8Cv2n95z2m3Ycr0dTFx9+/OJ6VNKrDo7AqlX9LJw8BPPJhMh/2jp29pQIDAQAB\n\
AoGABObfUlt2NLsc3eyqPj73eKQzvPt3bLbskTHjqjsSzv8x70GjXrv/e8aiGO6v\n\
mrvNqaXPsxOW9jKqvPQ3cI5/acUSq3pKvYUrWnakVFNrtcWLIp5ymWjLaS333Lag\n\
kneJLHX0kDFiv392vsAAsmO/gE8m5Pv6adSWZhAqKiYviAkCQQDl49DmVpcVsNha\n\
6rLbFAZn1MFgLv3EeyoVFXfLqtF+V8kpU41a4rxDR1MCsNmnrYEzTbO+/fyuVpFg\n\
+TwDGMXTAkEAwCBMv5IXFA5eItxyFBNQTyEZbK8bZ4X/hZ2SsG6pXHwadcTX6svx\n\
4YJmY4wlUURfU3RkJDsdcSevBIo5zzTrpwJBAMLkiE0+S4fQDRvGrSqdp3CPJgFs\n\
1SalY9/L+2tmvYPm2Ft4wfWzEvfWl8FIPL2ykj30OdZJbNY//a/Am+fkMJECQH5O\n\
fcZPt8Zir7aBcKoMDHcJDprp/70uVc80yXQePE9l80tLTpu42lrkDIYTY5EqvvSx\n\
hwheqLt0WFZGvTyg0O8CQAbiXmDm1EG0zjH8K8xPmszPxL/36afODYlQdDQ1z8Nw\n\
y0SMhmktSLvuMw+iApPqe6t3xz9Nj8UtmihBzDalnLw=\n\
-----END RSA PRIVATE KEY-----\n";
/// The public half of `PKCS1_KEY`.
const PUBLIC_KEY: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAn6dfekzA1tKDEipKCaPL\n\
NEfgEAshV9eBKI5ce7QAB4O2jlAFDBo1W5k9CYZGpkkrOEmaxbTYgEf7DYXYV0es\n\
JNOTAFdOQASJMVyP7qLFPh6JVfrfVYp+3e3KBzCaoURM9atxJkP+TGOkKDwkeMXP\n\
snlqHSZREPNuEea5PK/WtFeqj+zINbF+7+cMCjJaoxN4QTk6mbR4MjZNd+guUZhp\n\
VFlW5FRRAyAqdJxAwFcjY14QbTIj3QaPX96KvtKC9Fhd30tOr4nrjHSWQ1Lc/yQu\n\
u8Kx6UIMS3upItxk/KwmlbLGB37uXW3whOs+GZr3+z0oGmC7d4rc1z2d5ykSEAc5\n\
hwIDAQAB\n\
-----END PUBLIC KEY-----\n";
/// `PKCS1_KEY` as encrypted PKCS#8.
const ENCRYPTED_KEY: &str = "\
-----BEGIN ENCRYPTED PRIVATE KEY-----\n\
MIIFLTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQIkHNpVH0J8Y0CAggA\n\
MAwGCCqGSIb3DQIJBQAwHQYJYIZIAWUDBAEqBBCOs+tRMVNm6FdE9ZK9PnwyBIIE\n\
0PSRCEpCy8giorN+t1Q6pyc6B6bD/AT1v5/jdv13k7p2WSYYUewrAs/f7YPzIkhq\n\
qToSgC/tAif4rFRiCJmupelBoDlIDzvd1l8gR45xIkbPaY2Jy98Q+thyBFZA2knu\n\
iTIz/F0mcbRSCZs75lssPCFPN3qYhRW97l0ZtwkisHwZpi7SpF58+DiGx6HPZytX\n\
LT0SHNQeKP1W5fRu1R0Y3lJbPfT+rg2JVZ8fwFQSglWWrxO/O+lV5IyvI0DUUX04\n\
qXfTEeC7YpZbJ5nnfT/rku9nz7Swhq8Ba0IvXPdja0qjUUlTsEx4vJbeDdJOdxYJ\n\
1Y0Gf3xY1hkjsgjjzSnlYIhMaVP/GRbidvWWobNOHnmqEiTdMXYV4YCwYFKhsVpG\n\
iI5/WyS5rGq6jb3v2zKh5N8xdjlOJhoU/O8XTihvhYLxunUfYFFex9NbWygcyNQM\n\
yJ3LbqWmRtmftd+2qf58sYx3pPFFj1+ENmsiFbrpzUzY35uL8t0XtAqw4oo4tSgz\n\
XoBB77Bmnd4N6+ZHpmtccgjPzEWlAKJ+L3qRWU42+1kCaEuUMbPAJ+dS2CqZwmWw\n\
F9yx5jOg8IDYSbDCqWKs4yTuWh4iB/1FocR0ihCifJKZjHi1EM9fw0yzUOvpPdWg\n\
0AAK/9UDZV4acmOujz0z3zs3kVyJDbNgFEUzxgqIZ22fnfjEepDWg4URkEp2wrop\n\
ItgUTIrHltd8ohW9KAF9i9P3/AUXRijcY2oT7AhpAsXE0lc/jzqrUtRnXw0LjY1c\n\
3IUikJ3YKdwhGddr3vNN8GgCm+wv1p3rCkLPGzi/lQNsxgRBhLOdxGGx1717v+Nt\n\
+QbPQy2zoDDj4mMIfAXw8NzRkfMus//xt6RAl4cI6RRn2wGGdxdRouwloGQtUJ5I\n\
GvtR9+A/he+Xc6ZihxX0eCegTtgD1C+m7Ly/VfkZiCGg0IzB6PbmhRzNHtQV4kAl\n\
jwjPzbkr5gdkXlvoURx+Lfz0mKvbjxqlq240wt9f/GnipJ5PYTsb0E6KHRI70qwm\n\
l2xjfKPfIRefaV2iwIXkuMInKjUziFy529TLAmxvXUSam0HG8ZieNU9eIo5X+ITc\n\
cyDfMZ57LNOVpxEyiQWzk3lcfIyp1B2Wuv7zn+asYqrdQEegQie+eT62+7K4fTJk\n\
pwO28PnSnYJCJNtpwOcDPtsZ3T7QhHVS3f2bozwekmcpkq+6+nsEJosaaBIWKiM5\n\
tuKKnaxxIlkM6Ay9r22sGXBqzf/BG/PtwJO7QGLzCLFOIf7P5/NzkmcheTAm0+2k\n\
zVV1Wv0lVMoEjys6XsMF9GkEQ8Iezp+f4aCr7JWFbLqoPnpQJx1BqUR/xAOwTkQx\n\
n3KgHlHLKE+kSC8Uu9W0tS+pHira5LmUG8cacjGIZQR7KWrraC8DFEKRbY34QzW1\n\
eMeN5Y1lLTEKxoYzHMQx0shLs9z8w1w21ZBUmi9CwENReD9Eslu8My35Y3z57oA5\n\
4JqGEwaNzMjRx9aAINz2Auy68Xlq2X5pN00zDc8titE0kWgjOgIapCmti30XNShp\n\
4BoUo8elYl7MjAMRhqjBbexebWWHHp2uAB6P/bXSfo72QgZUoSFqE/34ZSfItGTb\n\
HiU5A2dYem/5mtkt6wycVSHVpN9ueSZZUqx2ILPvnyfy\n\
-----END ENCRYPTED PRIVATE KEY-----\n";

/// A moment with whole seconds: 2030-01-02T03:04:05Z.
const NOW_SECS: i64 = 1_893_553_445;

fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_string())
}

fn app(key: &str, client_id: Option<&str>) -> GithubApp {
    GithubApp::new("123456", client_id.map(str::to_string), 42, secret(key)).expect("app")
}

/// The JWT's header and claims, decoded by hand.
fn decode(jwt: &str) -> (serde_json::Value, serde_json::Value, Vec<u8>) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(
        parts.len(),
        3,
        "a JWS compact serialisation has three parts"
    );
    let part = |i: usize| URL_SAFE_NO_PAD.decode(parts[i]).expect("base64url");
    let json = |i: usize| serde_json::from_slice(&part(i)).expect("json");
    (json(0), json(1), part(2))
}

/// Verifies `jwt` against the public half of `pem` with the `rsa` crate.
fn verify(jwt: &str, pem: &str) {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::signature::Verifier;
    let private = rsa::RsaPrivateKey::from_pkcs1_pem(pem)
        .or_else(|_| rsa::RsaPrivateKey::from_pkcs8_pem(pem))
        .expect("test key");
    let key = rsa::pkcs1v15::VerifyingKey::<rsa::sha2::Sha256>::new(private.to_public_key());
    let (signed, sig) = jwt.rsplit_once('.').expect("dot");
    let sig = URL_SAFE_NO_PAD.decode(sig).expect("sig");
    let sig = rsa::pkcs1v15::Signature::try_from(sig.as_slice()).expect("sig shape");
    key.verify(signed.as_bytes(), &sig)
        .expect("RS256 signature");
}

#[test]
fn both_key_forms_sign_rs256_jwts_with_githubs_claims() {
    let now = Timestamp(NOW_SECS * 1000 + 999);
    for (pem, client_id, iss) in [
        (PKCS1_KEY, None, "123456"),
        (PKCS8_KEY, None, "123456"),
        (PKCS1_KEY, Some("Iv23liAbCdEf"), "Iv23liAbCdEf"),
        (
            PKCS8_KEY,
            Some("Iv1.8a61f9b3a7aba766"),
            "Iv1.8a61f9b3a7aba766",
        ),
    ] {
        let app = app(pem, client_id);
        assert_eq!(app.issuer(), iss);
        let jwt = app.jwt(now).expect("jwt");
        let (header, claims, sig) = decode(jwt.expose_secret());
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(claims["iat"], NOW_SECS - 60);
        assert_eq!(claims["exp"], NOW_SECS + 540);
        assert_eq!(claims["iss"], iss);
        assert_eq!(claims.as_object().map(|o| o.len()), Some(3), "{claims}");
        assert_eq!(sig.len(), 256, "RSA-2048 signature");
        verify(jwt.expose_secret(), pem);
    }
}

#[test]
fn a_pkcs1_key_and_its_pkcs8_form_are_one_key() {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::EncodePrivateKey;
    // RSA PKCS#1 v1.5 signatures are deterministic: both forms of one key sign alike.
    let converted = rsa::RsaPrivateKey::from_pkcs1_pem(PKCS1_KEY)
        .expect("test key")
        .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
        .expect("pkcs8");
    assert!(converted.starts_with("-----BEGIN PRIVATE KEY-----"));
    let from_pkcs1 = app(PKCS1_KEY, None).jwt(Timestamp(0)).expect("jwt");
    let from_pkcs8 = app(&converted, None).jwt(Timestamp(0)).expect("jwt");
    assert_eq!(from_pkcs1.expose_secret(), from_pkcs8.expose_secret());
    let other = app(PKCS8_KEY, None).jwt(Timestamp(0)).expect("jwt");
    assert_ne!(from_pkcs1.expose_secret(), other.expose_secret());
}

#[test]
fn anything_but_an_rsa_private_key_is_refused_without_being_quoted() {
    let mut damaged = PKCS1_KEY.to_string();
    // Flip characters in the middle of the body: still base64, no longer the key.
    let mid = damaged.len() / 2;
    damaged.replace_range(mid..mid + 8, "AAAAAAAA");
    let cases: Vec<(&str, String, &str)> = vec![
        ("garbage", "not a key at all, secret-canary-1234567890".into(), "not a PEM block"),
        ("empty", String::new(), "not a PEM block"),
        ("EC", EC_KEY.into(), "not an RSA private key"),
        ("public", PUBLIC_KEY.into(), "public key"),
        ("encrypted", ENCRYPTED_KEY.into(), "encrypted"),
        ("1024-bit", RSA_1024_KEY.into(), "1024 bits"),
        ("damaged", damaged, "RSA"),
        (
            "openssh",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n".into(),
            "not an RSA key",
        ),
    ];
    for (what, pem, expect) in cases {
        let e = GithubApp::new("123456", None, 42, secret(&pem)).expect_err(what);
        let text = e.to_string();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidInput, "{what}: {text}");
        assert!(text.contains("GitHub App private key"), "{what}: {text}");
        assert!(text.contains(expect), "{what}: {text}");
        assert!(!text.contains("canary"), "{what}: {text}");
        // No run of the key's body reaches the message.
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            for chunk in line.as_bytes().chunks(12).filter(|c| c.len() == 12) {
                let chunk = std::str::from_utf8(chunk).expect("ascii");
                assert!(!text.contains(chunk), "{what} quoted its key: {text}");
            }
        }
        assert!(!format!("{e:?}").contains("MII"), "{what}");
    }
}

#[test]
fn ids_are_checked() {
    let new = |app: &str, client: Option<&str>, inst: u64| {
        GithubApp::new(app, client.map(str::to_string), inst, secret(PKCS1_KEY))
    };
    for bad in ["", "abc", "12a", "0", "-1", "123456789012345678901"] {
        let e = new(bad, None, 1).expect_err(bad);
        assert!(e.to_string().contains("GitHub App id"), "{e}");
    }
    let e = new("1", Some("has space"), 1).expect_err("client id");
    assert!(e.to_string().contains("client id"), "{e}");
    let e = new("1", None, 0).expect_err("installation 0");
    assert!(e.to_string().contains("installation id"), "{e}");
    // An empty client id is none; ids are trimmed.
    let app = new(" 77 ", Some(" "), 9).expect("ok");
    assert_eq!(
        (app.app_id(), app.client_id(), app.installation_id()),
        ("77", None, 9)
    );
    assert_eq!(app.issuer(), "77");
}

#[test]
fn debug_shows_ids_only() {
    let app = app(PKCS1_KEY, Some("Iv23liAbCdEf"));
    let jwt = app.jwt(Timestamp(0)).expect("jwt");
    let text = format!("{app:?} {:?}", app.clone());
    assert!(text.contains("123456") && text.contains("Iv23liAbCdEf") && text.contains("42"));
    assert!(
        !text.contains("MII") && !text.contains(jwt.expose_secret()),
        "{text}"
    );
    let token = InstallationToken {
        token: secret("ghs_canary_token"),
        expires_at: Timestamp(0),
    };
    assert!(!format!("{token:?}").contains("canary"));
    assert_eq!(
        format!("{:?}", InstallationTokenCache::new()),
        "InstallationTokenCache { entries: 0 }"
    );
    // A clone signs alike (PKCS#1 v1.5 is deterministic).
    let again = app.clone().jwt(Timestamp(0)).expect("jwt");
    assert_eq!(jwt.expose_secret(), again.expose_secret());
}

#[test]
fn narrowing_sends_only_what_it_sets() {
    assert_eq!(TokenNarrowing::none().body(), None);
    let mut n = TokenNarrowing {
        repositories: vec!["docs".into(), "site".into()],
        ..TokenNarrowing::default()
    };
    assert_eq!(
        n.body(),
        Some(serde_json::json!({"repositories": ["docs", "site"]}))
    );
    n.repository_ids = vec![7];
    n.permissions.insert("contents".into(), "read".into());
    assert_eq!(
        n.body(),
        Some(serde_json::json!({
            "repositories": ["docs", "site"],
            "repository_ids": [7],
            "permissions": {"contents": "read"},
        }))
    );
    n.check().expect("valid");
    for (bad, expect) in [
        (vec!["octo-org/docs".to_string()], "without"),
        (vec![String::new()], "not a repository name"),
        (vec!["a b".to_string()], "not a repository name"),
        (vec!["r".to_string(); 501], "500"),
    ] {
        let n = TokenNarrowing {
            repositories: bad,
            ..TokenNarrowing::default()
        };
        let e = n.check().expect_err(expect);
        assert!(e.to_string().contains(expect), "{e}");
    }
    let mut n = TokenNarrowing::default();
    n.permissions.insert("contents".into(), "Read!".into());
    assert!(n.check().is_err());
    let n = TokenNarrowing {
        repository_ids: vec![0],
        ..TokenNarrowing::default()
    };
    assert!(n.check().is_err());
}

#[test]
fn the_cache_key_ignores_order() {
    let key = |n: &TokenNarrowing| {
        let mut s = String::new();
        n.canonical(&mut s);
        s
    };
    let a = TokenNarrowing {
        repositories: vec!["b".into(), "a".into()],
        repository_ids: vec![2, 1, 2],
        ..TokenNarrowing::default()
    };
    let b = TokenNarrowing {
        repositories: vec!["a".into(), "b".into()],
        repository_ids: vec![1, 2],
        ..TokenNarrowing::default()
    };
    assert_eq!(key(&a), key(&b));
    assert_ne!(key(&a), key(&TokenNarrowing::none()));
    // A repository name cannot pose as an id list.
    let names = TokenNarrowing {
        repositories: vec!["1".into()],
        ..TokenNarrowing::default()
    };
    let ids = TokenNarrowing {
        repository_ids: vec![1],
        ..TokenNarrowing::default()
    };
    assert_ne!(key(&names), key(&ids));
}

#[test]
fn a_cached_token_is_fresh_until_five_minutes_before_expiry() {
    let expires_at = Timestamp(10_000_000);
    let c = Cached {
        token: secret("t"),
        expires_at,
    };
    let margin = 5 * 60 * 1000;
    assert!(c.fresh_at(Timestamp(0)));
    assert!(c.fresh_at(Timestamp(10_000_000 - margin - 1)));
    assert!(!c.fresh_at(Timestamp(10_000_000 - margin)));
    assert!(!c.fresh_at(Timestamp(10_000_000 + 1)));
}

#[test]
fn base_urls_must_be_secure() {
    assert_eq!(
        api_base("https://api.github.com/").expect("ok"),
        "https://api.github.com"
    );
    assert_eq!(
        api_base("https://ghe.example/api/v3").expect("ok"),
        "https://ghe.example/api/v3"
    );
    assert!(api_base("http://127.0.0.1:8080").is_ok());
    for bad in [
        "http://api.github.com",
        "ftp://x",
        "not a url",
        "https://user:pass@api.github.com",
        "https://api.github.com?x=1",
    ] {
        let e = api_base(bad).expect_err(bad);
        assert!(!e.to_string().contains("pass@"), "{e}");
    }
}

#[test]
fn githubs_message_is_kept_unless_it_quotes_the_jwt() {
    let app = app(PKCS1_KEY, None);
    let jwt = app.jwt(Timestamp(0)).expect("jwt");
    let body = |m: &str| serde_json::to_vec(&serde_json::json!({ "message": m })).expect("j");
    assert_eq!(
        github_message(&body("Integration not found"), &jwt),
        ": Integration not found"
    );
    assert_eq!(github_message(b"<html>", &jwt), "");
    assert_eq!(
        github_message(
            &body("'exp' is too far in the future (ghs_16C7e42F292c6912E7710c838347Ae178B4a)"),
            &jwt
        ),
        ": 'exp' is too far in the future ([redacted])"
    );
    assert_eq!(
        redact_token_shaped("repository 'octo-org/docs' at 2016-07-11T22:14:10Z"),
        "repository 'octo-org/docs' at 2016-07-11T22:14:10Z"
    );
    let echoed = github_message(&body(&format!("bad {}", jwt.expose_secret())), &jwt);
    assert!(echoed.contains("withheld"), "{echoed}");
    let sig = jwt
        .expose_secret()
        .rsplit('.')
        .next()
        .expect("sig")
        .to_string();
    assert!(github_message(&body(&sig), &jwt).contains("withheld"));
    let e = refusal(
        &app,
        "h",
        401,
        &body(&format!("x {}", jwt.expose_secret())),
        &jwt,
        Call::Mint,
    );
    assert!(!e.to_string().contains(&sig), "{e}");
    assert_eq!(e.kind(), crate::ErrorKind::Config);
    let kinds = [
        (403, crate::ErrorKind::PermissionDenied),
        (404, crate::ErrorKind::NotFound),
        (422, crate::ErrorKind::InvalidInput),
        (429, crate::ErrorKind::Transport),
        (502, crate::ErrorKind::Transport),
        (418, crate::ErrorKind::Transport),
    ];
    for (status, kind) in kinds {
        assert_eq!(
            refusal(&app, "h", status, b"", &jwt, Call::Mint).kind(),
            kind,
            "{status}"
        );
    }
}
