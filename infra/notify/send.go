package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/http"
	"net/smtp"
	"strconv"
	"strings"
	"time"
)

// Headers of a webhook request.
const (
	HeaderEvent    = "X-Orchestra-Event"    // EventRunFinished or EventScriptFailed
	HeaderDelivery = "X-Orchestra-Delivery" // the Delivery's ID: the same on every attempt
	// HeaderTimestamp is when the request was signed, in Unix seconds:
	// a receiver refuses old ones, so a captured request cannot be
	// replayed later.
	HeaderTimestamp = "X-Orchestra-Timestamp"
	// HeaderSignature is "sha256=" and the hex HMAC-SHA256, keyed with
	// the target's secret, of the timestamp, a dot and the body; absent
	// when the target has no secret.
	HeaderSignature = "X-Orchestra-Signature"
)

// errNotTarget: the webhook is no longer a target where its delivery
// was decided; it is not sent.
var errNotTarget = errors.New("no longer a notification target")

// errNoSMTP: an email delivery with email disabled.
var errNoSMTP = errors.New("no SMTP server configured (orchestra up --smtp HOST:PORT)")

// smtpTimeout bounds one attempt at sending an email.
const smtpTimeout = 10 * time.Second

// maxResponse is how much of a webhook's response is read.
const maxResponse = 64 << 10

// postWebhook posts d's payload to its URL, signed with the secret the
// target has now.
func (n *Notifier) postWebhook(ctx context.Context, d Delivery) error {
	secret, err := n.secret(d)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.Target, bytes.NewReader(d.Payload))
	if err != nil {
		return fmt.Errorf("webhook request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "orchestra-notify")
	req.Header.Set(HeaderEvent, d.Event)
	req.Header.Set(HeaderDelivery, d.ID)
	if secret != "" {
		ts := strconv.FormatInt(time.Now().Unix(), 10)
		req.Header.Set(HeaderTimestamp, ts)
		req.Header.Set(HeaderSignature, Sign(secret, ts, d.Payload))
	}
	resp, err := n.cfg.HTTPClient.Do(req)
	if err != nil {
		return fmt.Errorf("post webhook: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponse)) // lets the connection be reused
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("webhook answered %s", resp.Status)
	}
	return nil
}

// secret is the secret of d's webhook among its site's targets, or the
// global ones; errNotTarget when it is in neither any more.
func (n *Notifier) secret(d Delivery) (string, error) {
	targets := n.cfg.Global
	if d.Site != "" {
		var err error
		if targets, err = n.cfg.Sites.SiteTargets(d.Site); err != nil {
			return "", fmt.Errorf("targets of site %s: %w", d.Site, err)
		}
	}
	for _, t := range targets {
		if t.Webhook == d.Target {
			return t.Secret, nil
		}
	}
	return "", errNotTarget
}

// Sign is the value of HeaderSignature for body sent at timestamp.
func Sign(secret, timestamp string, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(timestamp + "."))
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// sendEmail sends d by SMTP as net/smtp.SendMail does (STARTTLS when
// offered, no authentication), with every step bounded by smtpTimeout
// and ctx.
func (n *Notifier) sendEmail(ctx context.Context, d Delivery) error {
	msg := n.email(d, time.Now())
	dialer := net.Dialer{Timeout: smtpTimeout}
	conn, err := dialer.DialContext(ctx, "tcp", n.cfg.SMTP)
	if err != nil {
		return fmt.Errorf("connect to SMTP server %s: %w", n.cfg.SMTP, err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(smtpTimeout)); err != nil {
		return fmt.Errorf("SMTP deadline: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	host, _, err := net.SplitHostPort(n.cfg.SMTP)
	if err != nil {
		return fmt.Errorf("SMTP server %q: %w", n.cfg.SMTP, err)
	}
	c, err := smtp.NewClient(conn, host)
	if err != nil {
		return fmt.Errorf("SMTP greeting: %w", err)
	}
	defer c.Close()
	if err := c.Hello("localhost"); err != nil {
		return fmt.Errorf("SMTP hello: %w", err)
	}
	if ok, _ := c.Extension("STARTTLS"); ok {
		if err := c.StartTLS(&tls.Config{ServerName: host}); err != nil {
			return fmt.Errorf("SMTP STARTTLS: %w", err)
		}
	}
	if err := c.Mail(n.from.Address); err != nil {
		return fmt.Errorf("SMTP MAIL FROM: %w", err)
	}
	if err := c.Rcpt(d.Target); err != nil {
		return fmt.Errorf("SMTP RCPT TO: %w", err)
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("SMTP DATA: %w", err)
	}
	if _, err := w.Write(msg); err != nil {
		return fmt.Errorf("SMTP DATA: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("SMTP DATA: %w", err)
	}
	if err := c.Quit(); err != nil {
		return fmt.Errorf("SMTP QUIT: %w", err)
	}
	return nil
}

// email is d as a plain-text message with CRLF line endings, its body
// quoted-printable so that no line outgrows SMTP's limit. The
// Message-ID derives from the delivery's, the same on every attempt.
func (n *Notifier) email(d Delivery, now time.Time) []byte {
	var b bytes.Buffer
	domain := n.from.Address[strings.LastIndexByte(n.from.Address, '@')+1:]
	for _, h := range [][2]string{
		{"From", n.from.String()},
		{"To", d.Target},
		{"Subject", mime.QEncoding.Encode("utf-8", d.Subject)},
		{"Date", now.Format(time.RFC1123Z)},
		{"Message-ID", "<" + d.ID + "@" + domain + ">"},
		{"MIME-Version", "1.0"},
		{"Content-Type", "text/plain; charset=utf-8"},
		{"Content-Transfer-Encoding", "quoted-printable"},
	} {
		b.WriteString(h[0] + ": " + h[1] + "\r\n")
	}
	b.WriteString("\r\n")
	// Writes to a bytes.Buffer do not fail.
	w := quotedprintable.NewWriter(&b)
	_, _ = io.WriteString(w, d.Text)
	_ = w.Close()
	return b.Bytes()
}
