// sigstoretest: an outside producer of keyless cosign signatures for the verification tests. A
// Fulcio/Rekor/TSA stack needs a database and network this machine does not give, so this plays
// their parts with sigstore-go's test CA helpers (pkg/testing/ca) and writes what they would hand
// out through cosign's own library code: a Sigstore trusted_root.json (sigstore-go's encoder), and
// per case an image pushed to a registry and signed keyless in cosign's `sha256-<hex>.sig` form
// (certificate, chain, Rekor bundle with its signed entry timestamp, RFC 3161 timestamp
// annotations) or as a Sigstore bundle v0.3 referrer (`cosign sign --new-bundle-format`).
//
//	sigstoretest -registry 127.0.0.1:5000 -repo keyless -out DIR [-format sig|bundle] [-case NAME]
//	sigstoretest -registry … -repo REPO -digest sha256:… -out DIR   (signs that artifact, case "valid")
//	sigstoretest -statement FILE -out DIR   (signs that in-toto statement per case: DIR/<case>.bundle.json)
//
// prints one JSON line per case: {case, format, reference, root, identity, issuer, cosignFlags}
// (with -statement, reference is the bundle file).
// The verdict of each case is not decided here: `cosign verify` judges it.
package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/cyberphone/json-canonicalization/go/src/webpki.org/jsoncanonicalizer"
	"github.com/digitorus/timestamp"
	"github.com/go-openapi/runtime"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	cbundle "github.com/sigstore/cosign/v2/pkg/cosign/bundle"
	"github.com/sigstore/cosign/v2/pkg/oci/mutate"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	ctypes "github.com/sigstore/cosign/v2/pkg/types"
	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	protodsse "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	protorekor "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"github.com/sigstore/rekor/pkg/generated/models"
	"github.com/sigstore/rekor/pkg/pki"
	"github.com/sigstore/rekor/pkg/types"
	"github.com/sigstore/rekor/pkg/types/dsse"
	"github.com/sigstore/rekor/pkg/types/hashedrekord"
	"github.com/sigstore/rekor/pkg/util"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/testing/ca"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/payload"
	"google.golang.org/protobuf/encoding/protojson"

	_ "github.com/sigstore/rekor/pkg/types/dsse/v0.0.1"
	_ "github.com/sigstore/rekor/pkg/types/hashedrekord/v0.0.1"
)

var (
	oidIssuerV1 = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 1}
	oidIssuerV2 = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 8}
	oidSCTList  = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 11129, 2, 4, 2}
	now         = time.Now().Truncate(time.Second)
)

const (
	identity = "https://github.com/acme/models/.github/workflows/release.yml@refs/heads/main"
	issuer   = "https://token.actions.githubusercontent.com"
)

// authority is one Fulcio CA (root + intermediate), Rekor log and TSA chain.
type authority struct {
	caRoot, caInter   *x509.Certificate
	caInterKey        *ecdsa.PrivateKey
	rekorKey          *ecdsa.PrivateKey
	ctKey             *ecdsa.PrivateKey
	tsaRoot, tsaInter *x509.Certificate
	tsaLeaf           *x509.Certificate
	tsaLeafKey        *ecdsa.PrivateKey
}

func newAuthority(tsaFrom, tsaTo time.Time) *authority {
	rootCert, rootKey := must2(ca.GenerateRootCa())
	// Intermediates of four hours each way (sigstore-go's helpers make them start two minutes
	// ago), so that certificates of the past hour chain at their signing time.
	inter, interKey := intermediate("fulcio-intermediate", x509.ExtKeyUsageCodeSigning, rootCert, rootKey)
	tsaInter, tsaInterKey := intermediate("tsa-intermediate", x509.ExtKeyUsageTimeStamping, rootCert, rootKey)
	tsaLeafKey := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
	ext := must(asn1.Marshal([]asn1.ObjectIdentifier{{1, 3, 6, 1, 5, 5, 7, 3, 8}}))
	tsaLeaf := must(x509.ParseCertificate(must(x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "tsa"}, NotBefore: tsaFrom, NotAfter: tsaTo,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageTimeStamping},
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 37}, Critical: true, Value: ext}},
	}, tsaInter, tsaLeafKey.Public(), tsaInterKey))))
	return &authority{
		caRoot: rootCert, caInter: inter, caInterKey: interKey,
		rekorKey: must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader)),
		ctKey:    must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader)),
		tsaRoot:  rootCert, tsaInter: tsaInter, tsaLeaf: tsaLeaf, tsaLeafKey: tsaLeafKey,
	}
}

func intermediate(cn string, eku x509.ExtKeyUsage, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	key := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn, Organization: []string{"sigstore.dev"}},
		NotBefore: now.Add(-4 * time.Hour), NotAfter: now.Add(4 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, ExtKeyUsage: []x509.ExtKeyUsage{eku},
		BasicConstraintsValid: true, IsCA: true,
	}
	return must(x509.ParseCertificate(must(x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)))), key
}

func logID(pub crypto.PublicKey) []byte {
	der := must(x509.MarshalPKIXPublicKey(pub))
	sum := sha256.Sum256(der)
	return sum[:]
}

// trustedRoot writes a trusted_root.json with this authority's parts (some left out on request).
func (a *authority) trustedRoot(path string, withLog, withTSA bool) {
	cas := []root.CertificateAuthority{&root.FulcioCertificateAuthority{
		Root: a.caRoot, Intermediates: []*x509.Certificate{a.caInter},
		ValidityPeriodStart: now.Add(-5 * time.Hour), URI: "https://fulcio.test",
	}}
	var tsas []root.TimestampingAuthority
	if withTSA {
		tsas = append(tsas, &root.SigstoreTimestampingAuthority{
			Root: a.tsaRoot, Intermediates: []*x509.Certificate{a.tsaInter}, Leaf: a.tsaLeaf,
			ValidityPeriodStart: now.Add(-5 * time.Hour), URI: "https://tsa.test",
		})
	}
	logs := map[string]*root.TransparencyLog{}
	if withLog {
		id := logID(a.rekorKey.Public())
		logs[hex.EncodeToString(id)] = &root.TransparencyLog{
			BaseURL: "https://rekor.test", ID: id, ValidityPeriodStart: now.Add(-5 * time.Hour),
			HashFunc: crypto.SHA256, PublicKey: a.rekorKey.Public(), SignatureHashFunc: crypto.SHA256,
		}
	}
	ctID := logID(a.ctKey.Public())
	ctlogs := map[string]*root.TransparencyLog{hex.EncodeToString(ctID): {
		BaseURL: "https://ctfe.test", ID: ctID, ValidityPeriodStart: now.Add(-5 * time.Hour),
		HashFunc: crypto.SHA256, PublicKey: a.ctKey.Public(), SignatureHashFunc: crypto.SHA256,
	}}
	tr := must(root.NewTrustedRoot(root.TrustedRootMediaType01, cas, ctlogs, tsas, logs))
	must0(os.WriteFile(path, must(json.Marshal(tr)), 0o644))
}

// leaf issues a Fulcio-like code-signing certificate: the identity as a URI SAN, the issuer in
// both Fulcio issuer extensions (1.1 raw, 1.8 DER UTF8String), and an SCT of ct's log embedded
// (RFC 6962: signed over the certificate's TBS without the SCT extension).
func (a *authority) leaf(san, iss string, from, to time.Time, ct *authority, eku x509.ExtKeyUsage) (*x509.Certificate, *ecdsa.PrivateKey) {
	key := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
	u := must(url.Parse(san))
	v2 := must(asn1.MarshalWithParams(iss, "utf8"))
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano()), NotBefore: from, NotAfter: to,
		URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage:     []x509.ExtKeyUsage{eku},
		ExtraExtensions: []pkix.Extension{{Id: oidIssuerV1, Value: []byte(iss)}, {Id: oidIssuerV2, Value: v2}},
	}
	pre := must(x509.ParseCertificate(must(x509.CreateCertificate(rand.Reader, tmpl, a.caInter, key.Public(), a.caInterKey))))
	sct := ct.sct(pre.RawTBSCertificate, a.caInter.RawSubjectPublicKeyInfo, from)
	list := append(u16(len(sct)+2), append(u16(len(sct)), sct...)...)
	tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, pkix.Extension{Id: oidSCTList, Value: must(asn1.Marshal(list))})
	der := must(x509.CreateCertificate(rand.Reader, tmpl, a.caInter, key.Public(), a.caInterKey))
	return must(x509.ParseCertificate(der)), key
}

func u16(n int) []byte { return []byte{byte(n >> 8), byte(n)} }

// sct is a v1 SCT of this authority's CT log for a precertificate entry.
func (a *authority) sct(tbs, issuerSPKI []byte, at time.Time) []byte {
	ms := make([]byte, 8)
	binary.BigEndian.PutUint64(ms, uint64(at.UnixMilli()))
	keyHash := sha256.Sum256(issuerSPKI)
	input := append([]byte{0, 0}, ms...)
	input = append(input, 0, 1)
	input = append(input, keyHash[:]...)
	input = append(input, byte(len(tbs)>>16), byte(len(tbs)>>8), byte(len(tbs)))
	input = append(input, tbs...)
	input = append(input, 0, 0)
	h := sha256.Sum256(input)
	sig := must(ecdsa.SignASN1(rand.Reader, a.ctKey, h[:]))
	out := append([]byte{0}, logID(a.ctKey.Public())...)
	out = append(out, ms...)
	out = append(out, 0, 0, 4, 3) // no extensions; SHA-256, ECDSA
	out = append(out, u16(len(sig))...)
	return append(out, sig...)
}

// timestamp is an RFC 3161 response over sig from this authority's TSA at genTime.
func (a *authority) timestamp(sig []byte, genTime time.Time) []byte {
	req := must(timestamp.CreateRequest(bytes.NewReader(sig), &timestamp.RequestOptions{Hash: crypto.SHA256}))
	parsed := must(timestamp.ParseRequest(req))
	ts := timestamp.Timestamp{HashAlgorithm: parsed.HashAlgorithm, HashedMessage: parsed.HashedMessage,
		Time: genTime, Policy: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 2}}
	return must(ts.CreateResponseWithOpts(a.tsaLeaf, a.tsaLeafKey, crypto.SHA256))
}

// entry is a Rekor entry of kind (hashedrekord or dsse) for the signature, its SET at integrated.
func (a *authority) entry(kind string, artifact, sig, certPEM []byte, integrated time.Time) (body []byte, set []byte, index int64) {
	props := types.ArtifactProperties{PublicKeyBytes: [][]byte{certPEM}, PKIFormat: string(pki.X509)}
	version := "0.0.1"
	switch kind {
	case hashedrekord.KIND:
		sum := sha256.Sum256(artifact)
		props.ArtifactHash = hex.EncodeToString(sum[:])
		props.SignatureBytes = sig
	case dsse.KIND:
		props.ArtifactBytes = artifact // the envelope JSON
	}
	ctx := context.Background()
	proposed := must(types.NewProposedEntry(ctx, kind, version, props))
	impl := must(types.CreateVersionedEntry(proposed))
	can := must(types.CanonicalizeEntry(ctx, impl))
	pe := must(models.UnmarshalProposedEntry(bytes.NewReader(can), runtime.JSONConsumer()))
	unmarshalled := must(types.UnmarshalEntry(pe))
	body = must(unmarshalled.Canonicalize(ctx))
	index = 1000 + integrated.Unix()%1000
	set = a.signSET(body, integrated.Unix(), index)
	return body, set, index
}

func (a *authority) signSET(body []byte, integrated, index int64) []byte {
	p := cbundle.RekorPayload{Body: base64.StdEncoding.EncodeToString(body), IntegratedTime: integrated,
		LogIndex: index, LogID: hex.EncodeToString(logID(a.rekorKey.Public()))}
	canon := must(jsoncanonicalizer.Transform(must(json.Marshal(p))))
	s := must(signature.LoadECDSASignerVerifier(a.rekorKey, crypto.SHA256))
	return must(s.SignMessage(bytes.NewReader(canon)))
}

// spec is one case's signing recipe.
type spec struct {
	name                string
	signer              *authority // whose CA issues the leaf
	sctBy               *authority // whose CT log signs the SCT of the leaf (default: the trusted one)
	leafFrom, leafTo    time.Time
	tlogAt, tsaAt       *time.Time       // nil: no log entry / no timestamp
	tamperLog           bool             // the entry's integrated time changed after the SET was signed
	foreignEntry        bool             // the log entry (SET valid) is of another signature
	eku                 x509.ExtKeyUsage // the leaf's extended key usage (default: code signing)
	otherDigest         bool             // the payload names another image
	root                string           // trusted root file the case is verified against
	verifyID, verifyIss string
	cosignFlags         []string
}

type output struct {
	Case        string   `json:"case"`
	Format      string   `json:"format"`
	Reference   string   `json:"reference"`
	Root        string   `json:"root"`
	Identity    string   `json:"identity"`
	Issuer      string   `json:"issuer"`
	CosignFlags []string `json:"cosignFlags"`
}

func main() {
	registry := flag.String("registry", "", "registry host:port (plain HTTP)")
	repo := flag.String("repo", "keyless", "repository")
	out := flag.String("out", ".", "directory for trusted roots")
	format := flag.String("format", "sig", "sig (sha256-<hex>.sig tag) or bundle (Sigstore bundle v0.3 referrer)")
	only := flag.String("case", "", "only this case")
	existing := flag.String("digest", "", "sign this existing sha256 digest of -repo with the valid recipe instead of pushing images")
	statementFile := flag.String("statement", "", "sign this in-toto statement (e.g. model_signing's) per case into DIR/<case>.bundle.json instead of pushing images")
	flag.Parse()

	main := newAuthority(now.Add(-2*time.Hour), now.Add(2*time.Hour))
	other := newAuthority(now.Add(-2*time.Hour), now.Add(2*time.Hour))
	// A TSA whose certificate ended before the time it stamps.
	expiredTSA := newAuthority(now.Add(-2*time.Hour), now.Add(-time.Hour))
	other.rekorKey = main.rekorKey // the log is the trusted one: only the CA differs
	expiredTSA.caRoot, expiredTSA.caInter, expiredTSA.caInterKey, expiredTSA.rekorKey, expiredTSA.ctKey = main.caRoot, main.caInter, main.caInterKey, main.rekorKey, main.ctKey

	file := func(n string) string { return filepath.Join(*out, n) }
	main.trustedRoot(file("trusted_root.json"), true, true)
	main.trustedRoot(file("no-log.json"), false, true)
	main.trustedRoot(file("no-tsa.json"), true, false)
	expiredTSA.trustedRoot(file("expired-tsa.json"), true, true)

	at := func(d time.Duration) *time.Time { t := now.Add(d); return &t }
	tsaOnly := []string{"--insecure-ignore-tlog", "--use-signed-timestamps"}
	cases := []spec{
		{name: "valid", tlogAt: at(0), tsaAt: at(0)},
		{name: "valid-log-only", tlogAt: at(0)},
		{name: "valid-tsa-only", tsaAt: at(0), cosignFlags: tsaOnly},
		{name: "wrong-identity", tlogAt: at(0), verifyID: "https://github.com/acme/models/.github/workflows/other.yml@refs/heads/main"},
		{name: "wrong-issuer", tlogAt: at(0), verifyIss: "https://gitlab.com"},
		{name: "outside-validity-no-proof", leafFrom: now.Add(-time.Hour), leafTo: now.Add(-50 * time.Minute), cosignFlags: tsaOnly},
		{name: "log-time-outside-validity", leafFrom: now.Add(-time.Hour), leafTo: now.Add(-50 * time.Minute), tlogAt: at(0)},
		{name: "expired-with-log", leafFrom: now.Add(-time.Hour), leafTo: now.Add(-50 * time.Minute), tlogAt: at(-55 * time.Minute)},
		{name: "expired-with-timestamp", leafFrom: now.Add(-time.Hour), leafTo: now.Add(-50 * time.Minute), tsaAt: at(-55 * time.Minute), cosignFlags: tsaOnly},
		{name: "tampered-log-entry", tlogAt: at(0), tamperLog: true},
		{name: "log-entry-of-another-signature", tlogAt: at(0), foreignEntry: true},
		{name: "log-key-absent", tlogAt: at(0), root: "no-log.json"},
		{name: "tsa-key-absent", tsaAt: at(0), root: "no-tsa.json", cosignFlags: tsaOnly},
		{name: "tsa-cert-expired", signer: expiredTSA, tsaAt: at(0), root: "expired-tsa.json", cosignFlags: tsaOnly},
		{name: "other-digest", tlogAt: at(0), otherDigest: true},
		{name: "other-ca", signer: other, tlogAt: at(0)},
		{name: "sct-of-unknown-log", sctBy: other, tlogAt: at(0)},
		{name: "not-a-code-signing-certificate", eku: x509.ExtKeyUsageEmailProtection, tlogAt: at(0)},
	}
	ctx := context.Background()
	_ = ctx
	opts := []remote.Option{}
	for _, c := range cases {
		if *only != "" && c.name != *only {
			continue
		}
		if c.signer == nil {
			c.signer = main
		}
		if c.eku == 0 {
			c.eku = x509.ExtKeyUsageCodeSigning
		}
		if c.sctBy == nil {
			c.sctBy = main
		}
		if c.leafFrom.IsZero() {
			c.leafFrom, c.leafTo = now.Add(-time.Minute), now.Add(10*time.Minute)
		}
		if c.root == "" {
			c.root = "trusted_root.json"
		}
		id, iss := identity, issuer
		if c.verifyID != "" {
			id = c.verifyID
		}
		if c.verifyIss != "" {
			iss = c.verifyIss
		}
		if *statementFile != "" {
			// The statement names its own subject: a case about another digest has no meaning here.
			if c.otherDigest {
				continue
			}
			bundle := file(c.name + ".bundle.json")
			must0(os.WriteFile(bundle, makeBundle(c, must(os.ReadFile(*statementFile))), 0o644))
			fmt.Println(string(must(json.Marshal(output{Case: c.name, Format: "bundle", Reference: bundle, Root: file(c.root),
				Identity: id, Issuer: iss, CosignFlags: append([]string{}, c.cosignFlags...)}))))
			continue
		}
		ref := must(name.ParseReference(fmt.Sprintf("%s/%s:%s-%s", *registry, *repo, *format, c.name), name.Insecure))
		var digest name.Digest
		if *existing != "" {
			if c.name != "valid" {
				continue
			}
			digest = ref.Context().Digest(*existing)
		} else {
			img := must(random.Image(512, 1))
			must0(remote.Write(ref, img, opts...))
			digest = ref.Context().Digest(must(img.Digest()).String())
		}
		signed := digest
		if c.otherDigest {
			decoy := must(random.Image(512, 1))
			dref := must(name.ParseReference(fmt.Sprintf("%s/%s:%s-%s-decoy", *registry, *repo, *format, c.name), name.Insecure))
			must0(remote.Write(dref, decoy, opts...))
			signed = ref.Context().Digest(must(decoy.Digest()).String())
		}
		if *format == "bundle" {
			signBundle(c, digest, signed)
		} else {
			signSig(c, digest, signed)
		}
		line := must(json.Marshal(output{Case: c.name, Format: *format, Reference: digest.String(), Root: file(c.root),
			Identity: id, Issuer: iss, CosignFlags: append([]string{}, c.cosignFlags...)}))
		fmt.Println(string(line))
	}
}

// signSig attaches a keyless signature of `signed` at digest's `sha256-<hex>.sig` tag.
func signSig(c spec, digest, signed name.Digest) {
	a := c.signer
	cert, key := a.leaf(identity, issuer, c.leafFrom, c.leafTo, c.sctBy, c.eku)
	certPEM := must(cryptoutils.MarshalCertificateToPEM(cert))
	chainPEM := must(cryptoutils.MarshalCertificatesToPEM([]*x509.Certificate{a.caInter, a.caRoot}))
	body := must(payload.Cosign{Image: signed}.MarshalJSON())
	h := sha256.Sum256(body)
	sig := must(ecdsa.SignASN1(rand.Reader, key, h[:]))
	b64 := base64.StdEncoding.EncodeToString(sig)
	opts := []static.Option{static.WithCertChain(certPEM, chainPEM)}
	if c.tlogAt != nil {
		logged, loggedSig := body, sig
		if c.foreignEntry {
			// A genuine entry (valid SET) of another signature by the same certificate.
			logged = append(append([]byte{}, body...), ' ')
			h := sha256.Sum256(logged)
			loggedSig = must(ecdsa.SignASN1(rand.Reader, key, h[:]))
		}
		entry, set, index := a.entry(hashedrekord.KIND, logged, loggedSig, certPEM, *c.tlogAt)
		integrated := c.tlogAt.Unix()
		if c.tamperLog {
			integrated -= 30
		}
		opts = append(opts, static.WithBundle(&cbundle.RekorBundle{SignedEntryTimestamp: set, Payload: cbundle.RekorPayload{
			Body: base64.StdEncoding.EncodeToString(entry), IntegratedTime: integrated, LogIndex: index,
			LogID: hex.EncodeToString(logID(a.rekorKey.Public()))}}))
	}
	if c.tsaAt != nil {
		// cosign verifies the stamp over the raw signature bytes.
		opts = append(opts, static.WithRFC3161Timestamp(&cbundle.RFC3161Timestamp{SignedRFC3161Timestamp: a.timestamp(sig, *c.tsaAt)}))
	}
	s := must(static.NewSignature(body, b64, opts...))
	se := must(mutate.AttachSignatureToEntity(ociremote.SignedUnknown(digest), s))
	must0(ociremote.WriteSignatures(digest.Repository, se))
}

// signBundle attaches a Sigstore bundle v0.3 (DSSE of an in-toto statement naming `signed`) as a
// referrer of digest, as `cosign sign --new-bundle-format` does.
func signBundle(c spec, digest, signed name.Digest) {
	statement := must(json.Marshal(map[string]any{
		"_type":         "https://in-toto.io/Statement/v1",
		"subject":       []any{map[string]any{"name": signed.Repository.Name(), "digest": map[string]string{"sha256": signed.DigestStr()[7:]}}},
		"predicateType": ctypes.CosignSignPredicateType,
		"predicate":     map[string]any{},
	}))
	must0(ociremote.WriteAttestationNewBundleFormat(digest, makeBundle(c, statement), ctypes.CosignSignPredicateType))
}

// makeBundle signs statement keyless as a DSSE envelope and returns the Sigstore bundle v0.3 JSON.
func makeBundle(c spec, statement []byte) []byte {
	a := c.signer
	cert, key := a.leaf(identity, issuer, c.leafFrom, c.leafTo, c.sctBy, c.eku)
	certPEM := must(cryptoutils.MarshalCertificateToPEM(cert))
	payloadType := "application/vnd.in-toto+json"
	pae := []byte(fmt.Sprintf("DSSEv1 %d %s %d %s", len(payloadType), payloadType, len(statement), statement))
	h := sha256.Sum256(pae)
	sig := must(ecdsa.SignASN1(rand.Reader, key, h[:]))
	envelope := must(json.Marshal(map[string]any{"payloadType": payloadType, "payload": base64.StdEncoding.EncodeToString(statement),
		"signatures": []any{map[string]any{"keyid": "", "sig": base64.StdEncoding.EncodeToString(sig)}}}))
	material := &protobundle.VerificationMaterial{Content: &protobundle.VerificationMaterial_Certificate{Certificate: &protocommon.X509Certificate{RawBytes: cert.Raw}}}
	if c.tlogAt != nil {
		logged, loggedSig := envelope, sig
		if c.foreignEntry {
			// A genuine entry (valid SET) of another envelope signed by the same certificate.
			other := []byte(fmt.Sprintf("DSSEv1 %d %s %d %s ", len(payloadType), payloadType, len(statement)+1, statement))
			h := sha256.Sum256(other)
			loggedSig = must(ecdsa.SignASN1(rand.Reader, key, h[:]))
			logged = must(json.Marshal(map[string]any{"payloadType": payloadType, "payload": base64.StdEncoding.EncodeToString(append(append([]byte{}, statement...), ' ')),
				"signatures": []any{map[string]any{"keyid": "", "sig": base64.StdEncoding.EncodeToString(loggedSig)}}}))
		}
		entry, set, index := a.entry(dsse.KIND, logged, loggedSig, certPEM, *c.tlogAt)
		integrated := c.tlogAt.Unix()
		if c.tamperLog {
			integrated -= 30
		}
		material.TlogEntries = []*protorekor.TransparencyLogEntry{{
			LogIndex: index, LogId: &protocommon.LogId{KeyId: logID(a.rekorKey.Public())},
			KindVersion:       &protorekor.KindVersion{Kind: dsse.KIND, Version: "0.0.1"},
			IntegratedTime:    integrated,
			InclusionPromise:  &protorekor.InclusionPromise{SignedEntryTimestamp: set},
			CanonicalizedBody: entry,
			InclusionProof:    a.inclusionProof(entry),
		}}
	}
	if c.tsaAt != nil {
		material.TimestampVerificationData = &protobundle.TimestampVerificationData{Rfc3161Timestamps: []*protocommon.RFC3161SignedTimestamp{
			{SignedTimestamp: a.timestamp(sig, *c.tsaAt)}}}
	}
	b := &protobundle.Bundle{MediaType: "application/vnd.dev.sigstore.bundle.v0.3+json", VerificationMaterial: material,
		Content: &protobundle.Bundle_DsseEnvelope{DsseEnvelope: &protodsse.Envelope{Payload: statement, PayloadType: payloadType,
			Signatures: []*protodsse.Signature{{Sig: sig}}}}}
	return must(protojson.Marshal(b))
}

// inclusionProof puts the entry in a two-leaf tree after a random leaf and signs the tree's
// checkpoint with the log key (bundles v0.2+ must carry a proof, not only a promise).
func (a *authority) inclusionProof(body []byte) *protorekor.InclusionProof {
	leaf := sha256.Sum256(append([]byte{0}, body...))
	sibling := make([]byte, 32)
	must(rand.Read(sibling))
	// The entry is the second leaf: a proof index of 0 would be left out of protojson's output,
	// and sigstore-python requires the field.
	rootHash := sha256.Sum256(append(append([]byte{1}, sibling...), leaf[:]...))
	signer := must(signature.LoadECDSASignerVerifier(a.rekorKey, crypto.SHA256))
	checkpoint := must(util.CreateAndSignCheckpoint(context.Background(), "rekor.test", 1, 2, rootHash[:], signer))
	return &protorekor.InclusionProof{LogIndex: 1, RootHash: rootHash[:], TreeSize: 2, Hashes: [][]byte{sibling},
		Checkpoint: &protorekor.Checkpoint{Envelope: string(checkpoint)}}
}

func must[T any](v T, err error) T {
	if err != nil {
		fmt.Fprintln(os.Stderr, "sigstoretest:", err)
		os.Exit(1)
	}
	return v
}

func must2[A, B any](a A, b B, err error) (A, B) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "sigstoretest:", err)
		os.Exit(1)
	}
	return a, b
}

func must0(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "sigstoretest:", err)
		os.Exit(1)
	}
}
