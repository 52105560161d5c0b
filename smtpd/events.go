package smtpd

import (
	"crypto/tls"
	"log/slog"
)

// logTLSHandshake logs a completed TLS handshake in the log vocabulary
// (cmd/postern/console/metrics.go) and returns the version's name.
func logTLSHandshake(log *slog.Logger, cs tls.ConnectionState) string {
	v := tls.VersionName(cs.Version)
	log.Info("tls handshake", "result", "ok", "version", v, "cipher", tls.CipherSuiteName(cs.CipherSuite))
	return v
}
