package smtpd

import (
	"encoding/base64"
	"strconv"

	"github.com/emersion/go-sasl"
)

func base64Std(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func saslPlain(user, password string) sasl.Client { return sasl.NewPlainClient("", user, password) }

func itoa(n int) string { return strconv.Itoa(n) }
