// Package smtptest is an in-process mail server for tests: it speaks just
// enough SMTP for net/smtp and keeps every message it accepts.
package smtptest

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

// Server is an in-process mail server on loopback.
type Server struct {
	ln net.Listener
	wg sync.WaitGroup

	mu   sync.Mutex
	msgs []Message
}

// Message is one accepted message: the envelope and the data, dot-
// stuffing undone, line endings as sent.
type Message struct {
	From string
	To   []string
	Raw  []byte
}

// Start serves on 127.0.0.1:0 until the test ends.
func Start(t *testing.T) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("smtp listen: %v", err)
	}
	s := &Server{ln: ln}
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(func() {
		_ = ln.Close()
		s.wg.Wait()
	})
	return s
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Messages are the messages accepted so far.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

func (s *Server) serve() {
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

func (s *Server) session(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	reply := func(line string) { _, _ = io.WriteString(c, line+"\r\n") }
	reply("220 test.local ESMTP")
	var m Message
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
			m = Message{From: angle(cmd)}
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

// Mail is a Message message decoded.
type Mail struct {
	Header  mail.Header
	Subject string
	Body    string
}

// Parse decodes m, failing the test on bare LF line endings.
func Parse(t *testing.T, m Message) Mail {
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
	return Mail{Header: msg.Header, Subject: subject, Body: string(body)}
}

// MailTo is the one message Message for addr.
func (s *Server) MailTo(t *testing.T, addr string) Mail {
	t.Helper()
	var found []Message
	for _, m := range s.Messages() {
		if len(m.To) == 1 && m.To[0] == addr {
			found = append(found, m)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d messages to %s, want 1", len(found), addr)
	}
	return Parse(t, found[0])
}

func (m Mail) String() string {
	return fmt.Sprintf("Subject: %s\n\n%s", m.Subject, m.Body)
}
