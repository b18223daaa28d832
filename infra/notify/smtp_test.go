package notify_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"strings"
	"sync"
	"testing"
	"time"
)

// smtpServer is an in-process mail server that speaks just enough SMTP
// for net/smtp and keeps every message it accepts.
type smtpServer struct {
	ln net.Listener
	wg sync.WaitGroup

	mu   sync.Mutex
	msgs []received
}

// received is one accepted message: the envelope and the data, dot-
// stuffing undone, line endings as sent.
type received struct {
	From string
	To   []string
	Raw  []byte
}

func startSMTP(t *testing.T) *smtpServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("smtp listen: %v", err)
	}
	s := &smtpServer{ln: ln}
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(func() {
		_ = ln.Close()
		s.wg.Wait()
	})
	return s
}

func (s *smtpServer) Addr() string { return s.ln.Addr().String() }

func (s *smtpServer) Messages() []received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]received(nil), s.msgs...)
}

func (s *smtpServer) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.session(c)
		}()
	}
}

func (s *smtpServer) session(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	reply := func(line string) { _, _ = io.WriteString(c, line+"\r\n") }
	reply("220 test.local ESMTP")
	var m received
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		cmd := strings.TrimRight(line, "\r\n")
		verb, _, _ := strings.Cut(cmd, " ")
		switch strings.ToUpper(verb) {
		case "EHLO":
			reply("250-test.local")
			reply("250 8BITMIME")
		case "HELO", "RSET", "NOOP":
			reply("250 OK")
		case "MAIL":
			m = received{From: angle(cmd)}
			reply("250 OK")
		case "RCPT":
			m.To = append(m.To, angle(cmd))
			reply("250 OK")
		case "DATA":
			reply("354 end with <CRLF>.<CRLF>")
			var data bytes.Buffer
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
				data.WriteString(strings.TrimPrefix(l, "."))
			}
			m.Raw = data.Bytes()
			s.mu.Lock()
			s.msgs = append(s.msgs, m)
			s.mu.Unlock()
			reply("250 queued")
		case "QUIT":
			reply("221 bye")
			return
		default:
			reply("502 not implemented")
		}
	}
}

// angle is the address between < and > in an SMTP command.
func angle(cmd string) string {
	_, rest, _ := strings.Cut(cmd, "<")
	addr, _, _ := strings.Cut(rest, ">")
	return addr
}

// parsedMail is a received message decoded.
type parsedMail struct {
	Header  mail.Header
	Subject string
	Body    string
}

func parseMail(t *testing.T, m received) parsedMail {
	t.Helper()
	if bytes.Count(m.Raw, []byte("\n")) != bytes.Count(m.Raw, []byte("\r\n")) {
		t.Errorf("message to %v has bare LF line endings:\n%q", m.To, m.Raw)
	}
	msg, err := mail.ReadMessage(bytes.NewReader(m.Raw))
	if err != nil {
		t.Fatalf("parse message: %v\n%s", err, m.Raw)
	}
	subject, err := new(mime.WordDecoder).DecodeHeader(msg.Header.Get("Subject"))
	if err != nil {
		t.Fatalf("decode subject: %v", err)
	}
	body, err := io.ReadAll(quotedprintable.NewReader(msg.Body))
	if err != nil {
		t.Fatalf("decode body: %v", err)
	}
	return parsedMail{Header: msg.Header, Subject: subject, Body: string(body)}
}

// mailTo is the one message received for addr.
func mailTo(t *testing.T, s *smtpServer, addr string) parsedMail {
	t.Helper()
	var found []received
	for _, m := range s.Messages() {
		if len(m.To) == 1 && m.To[0] == addr {
			found = append(found, m)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d messages to %s, want 1", len(found), addr)
	}
	return parseMail(t, found[0])
}

func (m parsedMail) String() string {
	return fmt.Sprintf("Subject: %s\n\n%s", m.Subject, m.Body)
}
