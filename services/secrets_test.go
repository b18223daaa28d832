package services_test

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/services"
)

// rawMessages returns every message of the EVENTS stream as stored.
func rawMessages(t testing.TB, h *harness) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx := context.Background()
	st, err := h.env.JS.Stream(ctx, events.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := uint64(1); seq <= h.lastSeq(t); seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("get message %d: %v", seq, err)
		}
		out = append(out, m)
	}
	return out
}

// secretIn reports where in m plain appears, or "".
func secretIn(m *jetstream.RawStreamMsg, plain string) string {
	if strings.Contains(m.Subject, plain) {
		return "subject"
	}
	for k, vs := range m.Header {
		if strings.Contains(k, plain) || slices.ContainsFunc(vs, func(v string) bool { return strings.Contains(v, plain) }) {
			return "header " + k
		}
	}
	if strings.Contains(string(m.Data), plain) {
		return "data"
	}
	return ""
}

func TestSecrets(t *testing.T) {
	const plain = "s3cret-PLAIN-value"
	h := newHarness(t)
	db := func(secret string, attrs string) string {
		return `{"kind":"Resource","type":"db","name":"orders","attrs":` + attrs + `,"secrets":{"db_password":"` + secret + `"}}`
	}

	res := h.apply(t, db(plain, `{"host":"db1"}`))
	if res.Objects[0].Result != services.Created {
		t.Fatalf("%+v", res)
	}
	saved := lastPayload[*events.ResourceSaved](t, h)
	sealed := saved.Resource.Secrets["db_password"]
	if !strings.HasPrefix(sealed, "sealed:v1:") {
		t.Fatalf("stored secret %q", sealed)
	}
	if got, err := h.sealer.Open(sealed, "db/orders#db_password"); err != nil || got != plain {
		t.Fatalf("the stored secret opens to %q, %v", got, err)
	}
	if _, err := h.sealer.Open(sealed, "db/other#db_password"); err == nil {
		t.Fatal("the sealed secret opens for another resource")
	}

	t.Run("view masks", func(t *testing.T) {
		v := services.ViewResource(saved.Resource)
		if v.Secrets["db_password"] != services.Masked || len(v.Secrets) != 1 || string(v.Attrs) != `{"host":"db1"}` || v.Type != "db" || v.Name != "orders" {
			t.Fatalf("view %+v", v)
		}
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), plain) || strings.Contains(string(b), sealed) {
			t.Fatalf("view shows the secret: %s", b)
		}
		if v := services.ViewResource(events.Resource{Type: "db", Name: "x"}); v.Secrets != nil {
			t.Fatalf("a resource without secrets shows %v", v.Secrets)
		}
	})

	t.Run("masked value written back keeps the secret", func(t *testing.T) {
		before := h.lastSeq(t)
		res := h.apply(t, db(services.Masked, `{"host":"db1"}`))
		if res.Objects[0].Result != services.Unchanged || res.Unit != "" || h.lastSeq(t) != before {
			t.Fatalf("%+v, stream at %d (was %d)", res, h.lastSeq(t), before)
		}
		// Also from a process that only read the log.
		res2, err := applyWith(h.newService(t), admin, db(services.Masked, `{"host":"db1"}`))
		if err != nil || res2.Objects[0].Result != services.Unchanged {
			t.Fatalf("%+v, %v", res2, err)
		}
		// Plain value again: unchanged as well.
		if res := h.apply(t, db(plain, `{"host":"db1"}`)); res.Objects[0].Result != services.Unchanged {
			t.Fatalf("%+v", res)
		}
	})

	t.Run("masked value with another change keeps the sealed bytes", func(t *testing.T) {
		res := h.apply(t, db(services.Masked, `{"host":"db2"}`))
		if o := res.Objects[0]; o.Result != services.Configured || !slices.Equal(o.Changed, []string{"attrs.host"}) {
			t.Fatalf("%+v", o)
		}
		if got := lastPayload[*events.ResourceSaved](t, h).Resource.Secrets["db_password"]; got != sealed {
			t.Fatalf("the unchanged secret was sealed anew: %q, was %q", got, sealed)
		}
	})

	t.Run("changed secret", func(t *testing.T) {
		res := h.apply(t, db("n3w-PLAIN-value", `{"host":"db2"}`))
		if o := res.Objects[0]; o.Result != services.Configured || !slices.Equal(o.Changed, []string{"secrets.db_password"}) {
			t.Fatalf("%+v", o)
		}
		ev := lastPayload[*events.ResourceSaved](t, h)
		if !slices.Equal(ev.Changed, []string{"secrets.db_password"}) {
			t.Fatalf("event changed %v", ev.Changed)
		}
		if got, err := h.sealer.Open(ev.Resource.Secrets["db_password"], "db/orders#db_password"); err != nil || got != "n3w-PLAIN-value" {
			t.Fatalf("%q, %v", got, err)
		}
	})

	t.Run("masked value for a secret that does not exist", func(t *testing.T) {
		before := h.lastSeq(t)
		_, err := h.applyAs(admin, `{"kind":"Resource","type":"db","name":"orders","attrs":{"host":"db2"},"secrets":{"db_password":"****","api_key":"****"}}`)
		wantError(t, err, services.EINVALID, "objects[0].secrets.api_key", "Resource db/orders", "****")
		_, err = h.applyAs(admin, `{"kind":"Resource","type":"db","name":"fresh","secrets":{"pw":"****"}}`)
		wantError(t, err, services.EINVALID, "objects[0].secrets.pw")
		if h.lastSeq(t) != before {
			t.Fatal("refused applies wrote")
		}
	})

	t.Run("removed secret", func(t *testing.T) {
		res := h.apply(t, `{"kind":"Resource","type":"db","name":"orders","attrs":{"host":"db2"}}`)
		if o := res.Objects[0]; o.Result != services.Configured || !slices.Equal(o.Changed, []string{"secrets.db_password"}) {
			t.Fatalf("%+v", o)
		}
		if s := lastPayload[*events.ResourceSaved](t, h).Resource.Secrets; len(s) != 0 {
			t.Fatalf("secrets left: %v", s)
		}
	})

	t.Run("no plain value in the log", func(t *testing.T) {
		h.apply(t, db(plain, `{"host":"db3"}`), `{"kind":"Resource","type":"db","name":"other","secrets":{"a":"`+plain+`","b":"`+plain+`"}}`)
		msgs := rawMessages(t, h)
		if len(msgs) < 6 {
			t.Fatalf("read %d messages", len(msgs))
		}
		for _, m := range msgs {
			for _, s := range []string{plain, "n3w-PLAIN-value", "PLAIN"} {
				if where := secretIn(m, s); where != "" {
					t.Fatalf("message %d (%s) holds %q in its %s", m.Sequence, m.Subject, s, where)
				}
			}
		}
	})
}
