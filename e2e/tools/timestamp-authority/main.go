// Command timestamp-authority serves RFC 3161 timestamps over HTTP at one address with sigstore's
// timestamp-authority: its file signer, its certificate chain checks and its own timestamp
// response handler (pkg/api), behind a plain net/http listener. timestamp-server itself always
// opens a metrics listener on :2112 of every interface, so only one could run per machine and
// not on loopback only; tests start several TSAs at once on 127.0.0.1.
//
//	timestamp-authority -addr 127.0.0.1:PORT -key tsa.key -chain chain.pem
//
// POST /api/v1/timestamp with an application/timestamp-query body answers an
// application/timestamp-reply holding the token, the certificate chain included.
package main

import (
	"flag"
	stdlog "log"
	"net/http"

	"github.com/go-openapi/runtime"
	"github.com/spf13/viper"

	"github.com/sigstore/timestamp-authority/v2/pkg/api"
	ts "github.com/sigstore/timestamp-authority/v2/pkg/generated/restapi/operations/timestamp"
	"github.com/sigstore/timestamp-authority/v2/pkg/log"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:3000", "address to listen on")
	key := flag.String("key", "", "PEM private key of the TSA certificate")
	chain := flag.String("chain", "", "PEM certificate chain: the TSA certificate first, its root last")
	flag.Parse()

	log.ConfigureLogger("prod")
	viper.Set("timestamp-signer", "file")
	viper.Set("timestamp-signer-hash", "sha256")
	viper.Set("file-signer-key-path", *key)
	viper.Set("certificate-chain-path", *chain)
	viper.Set("include-chain-in-response", true)
	viper.Set("enforce-intermediate-eku", true)
	api.ConfigureAPI()

	http.HandleFunc("/api/v1/timestamp", func(w http.ResponseWriter, r *http.Request) {
		params := ts.NewGetTimestampResponseParams()
		params.HTTPRequest = r
		params.Request = r.Body
		// What the generated server negotiates for a DER query.
		w.Header().Set("Content-Type", "application/timestamp-reply")
		api.TimestampResponseHandler(params).WriteResponse(w, runtime.ByteStreamProducer())
	})
	stdlog.Fatal(http.ListenAndServe(*addr, nil))
}
