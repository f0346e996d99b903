package main

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"strings"
	"time"
)

// tokenServer is the Docker/OCI token service a registry with `auth: token` sends clients to: it
// checks basic credentials and answers with a JWT (RS256, x5c header) granting the requested scope.
// It lets the bed test the bearer-challenge flow that Docker Hub, GHCR, Harbor and ECR use.
func tokenServer(args []string) error {
	fs := flag.NewFlagSet("token-server", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	keyPath := fs.String("key", "", "PEM RSA signing key")
	certPath := fs.String("cert", "", "PEM certificate of the signing key (the registry's rootcertbundle)")
	issuer := fs.String("issuer", "modelpack-bed-token-issuer", "iss claim")
	user := fs.String("user", "", "accepted username")
	password := fs.String("password", "", "accepted password")
	_ = fs.Parse(args)

	key, cert, err := loadSigner(*keyPath, *certPath)
	if err != nil {
		return err
	}
	http.HandleFunc("/token", func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(*user)) != 1 || subtle.ConstantTimeCompare([]byte(p), []byte(*password)) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="modelpack-bed-token"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"invalid credentials"}]}`, http.StatusUnauthorized)
			return
		}
		var access []map[string]any
		for _, scope := range r.URL.Query()["scope"] {
			parts := strings.Split(scope, ":")
			if len(parts) < 3 {
				continue
			}
			name := strings.Join(parts[1:len(parts)-1], ":")
			access = append(access, map[string]any{"type": parts[0], "name": name, "actions": strings.Split(parts[len(parts)-1], ",")})
		}
		now := time.Now()
		claims := map[string]any{
			"iss": *issuer, "sub": u, "aud": r.URL.Query().Get("service"),
			"exp": now.Add(5 * time.Minute).Unix(), "nbf": now.Add(-time.Minute).Unix(), "iat": now.Unix(),
			"jti": fmt.Sprintf("%d", now.UnixNano()), "access": access,
		}
		token, err := signJWT(key, cert, claims)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"token": token, "access_token": token, "expires_in": 300, "issued_at": now.UTC().Format(time.RFC3339)})
	})
	log.Printf("token-server: listening on %s", *addr)
	return http.ListenAndServe(*addr, nil)
}

func loadSigner(keyPath, certPath string) (*rsa.PrivateKey, []byte, error) {
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, nil, fmt.Errorf("%s: no PEM block", keyPath)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		if k, err1 := x509.ParsePKCS1PrivateKey(block.Bytes); err1 == nil {
			parsed = k
		} else {
			return nil, nil, fmt.Errorf("%s: %w", keyPath, err)
		}
	}
	key, ok := parsed.(*rsa.PrivateKey)
	if !ok {
		return nil, nil, fmt.Errorf("%s: not an RSA key", keyPath)
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, err
	}
	cblock, _ := pem.Decode(certPEM)
	if cblock == nil {
		return nil, nil, fmt.Errorf("%s: no PEM block", certPath)
	}
	return key, cblock.Bytes, nil
}

func signJWT(key *rsa.PrivateKey, certDER []byte, claims map[string]any) (string, error) {
	header := map[string]any{"alg": "RS256", "typ": "JWT", "x5c": []string{base64.StdEncoding.EncodeToString(certDER)}}
	enc := func(v any) (string, error) {
		b, err := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b), err
	}
	h, err := enc(header)
	if err != nil {
		return "", err
	}
	c, err := enc(claims)
	if err != nil {
		return "", err
	}
	digest := sha256.Sum256([]byte(h + "." + c))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, digest[:])
	if err != nil {
		return "", err
	}
	return h + "." + c + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}
