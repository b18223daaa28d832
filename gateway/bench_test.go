package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"testing"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/benchpair"
)

// The API benchmarks pair a write through HTTP on loopback (authenticate,
// decode, validate, decide, append, answer) with the raw JetStream operation
// the write ends in, on the same embedded server: a compare-and-set publish
// for one change, an atomic batch for an apply. The raw side writes to a
// stream of its own so the event log holds only real events.

// rawStream creates the stream the raw side writes to.
func rawStream(b *testing.B, js jetstream.JetStream) {
	b.Helper()
	_, err := js.CreateStream(context.Background(), jetstream.StreamConfig{
		Name: "RAW", Subjects: []string{"raw.>"}, Storage: jetstream.FileStorage, AllowAtomicPublish: true,
	})
	if err != nil {
		b.Fatal(err)
	}
}

// rawResource is the message a hand-written client would store for the
// same change: the event payload, a message id and a compare-and-set header.
func rawResource(b *testing.B, name string, n int) *nats.Msg {
	data, err := json.Marshal(&events.ResourceSaved{Resource: events.Resource{
		Type: "bench", Name: name, Attrs: json.RawMessage(`{"n":` + strconv.Itoa(n) + `}`),
	}, Changed: []string{"attrs.n"}})
	if err != nil {
		b.Fatal(err)
	}
	return &nats.Msg{Subject: "raw." + name, Data: data, Header: nats.Header{
		jetstream.MsgIDHeader:                   []string{uuid.NewString()},
		jetstream.ExpectedLastSubjSeqHeader:     []string{"0"},
		jetstream.ExpectedLastSubjSeqSubjHeader: []string{"raw." + name},
	}}
}

// send makes one API request and checks its status.
func send(b *testing.B, c *http.Client, method, url, token string, body []byte, want int) {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		b.Fatalf("%s %s = %d %s", method, url, resp.StatusCode, out)
	}
}

// BenchmarkHTTPWrite: one change per request (PUT of a new resource) against
// a raw compare-and-set publish. Target ≥ 25 %. Two baselines: the
// in-process connection `orchestra up` itself uses (the strict one), and a
// client connection over loopback TCP, the transport the HTTP request
// travels.
func BenchmarkHTTPWrite(b *testing.B) {
	for _, baseline := range []string{"in-process", "loopback"} {
		b.Run("baseline="+baseline, func(b *testing.B) {
			e := newEnv(b)
			rawStream(b, e.JS)
			js := e.JS
			if baseline == "loopback" {
				nc, err := nats.Connect(e.NATS)
				if err != nil {
					b.Fatal(err)
				}
				defer nc.Close()
				if js, err = jetstream.New(nc); err != nil {
					b.Fatal(err)
				}
			}
			c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			ctx := context.Background()
			var p benchpair.Pair
			rawN, oursN := 0, 0
			b.ResetTimer()
			p.Run(b, 64, func() {
				rawN++
				if _, err := js.PublishMsg(ctx, rawResource(b, "r"+strconv.Itoa(rawN), rawN)); err != nil {
					b.Fatal(err)
				}
			}, func() {
				oursN++
				body := []byte(`{"attrs":{"n":` + strconv.Itoa(oursN) + `}}`)
				send(b, c, "PUT", e.URL+"/v1/resources/bench/r"+strconv.Itoa(oursN), e.admin, body, http.StatusCreated)
			})
			p.Report(b, b.N)
		})
	}
}

// BenchmarkApply1000: an apply of 1,000 new resources (one unit of work)
// against a raw atomic batch of the same 1,000 messages. Target ≥ 80 %.
func BenchmarkApply1000(b *testing.B) {
	const size = 1000
	e := newEnv(b)
	rawStream(b, e.JS)
	c := &http.Client{Timeout: 0}
	ctx := context.Background()
	var p benchpair.Pair
	round := 0
	b.ResetTimer()
	p.Run(b, 2, func() {
		round++
		msgs := make([]*nats.Msg, size)
		for i := range msgs {
			msgs[i] = rawResource(b, fmt.Sprintf("a%d-%d", round, i), i)
		}
		if _, err := jetstreamext.PublishMsgBatch(ctx, e.JS, msgs); err != nil {
			b.Fatal(err)
		}
	}, func() {
		var body bytes.Buffer
		body.WriteString(`{"objects":[`)
		for i := range size {
			if i > 0 {
				body.WriteByte(',')
			}
			fmt.Fprintf(&body, `{"kind":"Resource","type":"bench","name":"a%d-%d","attrs":{"n":%d}}`, round, i, i)
		}
		body.WriteString(`]}`)
		send(b, c, "POST", e.URL+"/v1/apply", e.admin, body.Bytes(), http.StatusOK)
	})
	p.Report(b, b.N)
}
