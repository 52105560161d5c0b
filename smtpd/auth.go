package smtpd

import (
	"strings"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// authFunc checks a user name and password and returns nil or a reply.
type authFunc func(mechanism, username, password string) error

// maxSASLField bounds a user name or password (go-smtp bounds the line).
const maxSASLField = 512

// plainServer is go-sasl's PLAIN server (RFC 4616) with our replies: an
// authorization identity other than the user is refused, and go-sasl's
// own errors become errAuthMalformed.
type plainServer struct{ inner sasl.Server }

func newPlainServer(auth authFunc) sasl.Server {
	return plainServer{sasl.NewPlainServer(func(identity, username, password string) error {
		if identity != "" && !strings.EqualFold(identity, username) {
			return errAuthFailed // no proxy authorization
		}
		if len(username) > maxSASLField || len(password) > maxSASLField {
			return errAuthMalformed
		}
		return auth(sasl.Plain, username, password)
	})}
}

func (p plainServer) Next(response []byte) ([]byte, bool, error) {
	challenge, done, err := p.inner.Next(response)
	if err != nil {
		if _, ok := err.(*smtp.SMTPError); !ok {
			err = errAuthMalformed
		}
	}
	return challenge, done, err
}

// loginServer is the server side of the LOGIN mechanism
// (draft-murchison-sasl-login): go-sasl has only the client. The user name
// may come as the initial response.
type loginServer struct {
	auth     authFunc
	step     int
	username string
}

func newLoginServer(auth authFunc) sasl.Server { return &loginServer{auth: auth} }

func (l *loginServer) Next(response []byte) ([]byte, bool, error) {
	if len(response) > maxSASLField {
		return nil, false, errAuthMalformed
	}
	switch l.step {
	case 0:
		if len(response) == 0 {
			l.step = 1
			return []byte("Username:"), false, nil
		}
		l.username, l.step = string(response), 2
		return []byte("Password:"), false, nil
	case 1:
		l.username, l.step = string(response), 2
		return []byte("Password:"), false, nil
	case 2:
		l.step = 3
		return nil, true, l.auth(sasl.Login, l.username, string(response))
	}
	return nil, false, errAuthMalformed
}
