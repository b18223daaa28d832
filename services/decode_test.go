package services_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/orchestra-fleet/orchestra/services"
)

func TestDecodeObject(t *testing.T) {
	bad := []struct {
		name, doc   string
		code, field string
		words       []string
	}{
		{"empty", ``, services.EINVALID, "", []string{"malformed JSON"}},
		{"malformed", `{"kind":"Server",`, services.EINVALID, "", []string{"malformed JSON"}},
		{"not JSON", `kind: Server`, services.EINVALID, "", []string{"malformed JSON"}},
		{"a list", `[{"kind":"Server"}]`, services.EINVALID, "(document)", []string{"an object", "array"}},
		{"a string", `"Server"`, services.EINVALID, "(document)", []string{"an object"}},
		{"null", `null`, services.EINVALID, "kind", []string{"missing"}},
		{"kind missing", `{"name":"web1"}`, services.EINVALID, "kind", []string{"missing", "Server, Backend, Route, Resource"}},
		{"kind unknown", `{"kind":"Host","name":"web1"}`, services.EINVALID, "kind", []string{`"Host" is not a kind`}},
		{"kind lower case", `{"kind":"server","name":"web1"}`, services.EINVALID, "kind", []string{`"server"`}},
		{"kind not a string", `{"kind":1}`, services.EINVALID, "kind", []string{"a string"}},
		{"unknown field", `{"kind":"Server","name":"web1","hostname":"x"}`, services.EINVALID, "hostname", []string{"not a known field"}},
		{"field of another kind", `{"kind":"Server","name":"web1","actions":{}}`, services.EINVALID, "actions", []string{"not a known field"}},
		{"unknown nested field", `{"kind":"Backend","name":"b","type":"t","actions":{"save":"x"},"related":[{"type":"t","field":"f","x":1}]}`, services.EINVALID, "x", []string{"not a known field"}},
		{"wrong type name", `{"kind":"Server","name":5}`, services.EINVALID, "name", []string{"a string", "number"}},
		{"wrong type port", `{"kind":"Server","name":"web1","port":"22"}`, services.EINVALID, "port", []string{"a number", "string"}},
		{"fractional port", `{"kind":"Server","name":"web1","port":22.5}`, services.EINVALID, "port", []string{"a number"}},
		{"huge port", `{"kind":"Server","name":"web1","port":1e400}`, services.EINVALID, "port", []string{"a number"}},
		{"wrong type active", `{"kind":"Route","backend":"b","server":"s","active":"no"}`, services.EINVALID, "active", []string{"true or false"}},
		{"wrong type labels", `{"kind":"Resource","type":"t","name":"n","labels":["a"]}`, services.EINVALID, "labels", []string{"an object", "array"}},
		{"wrong type related entry", `{"kind":"Backend","name":"b","related":[{"type":1}]}`, services.EINVALID, "related.type", []string{"a string"}},
		{"wrong type delete", `{"kind":"Server","name":"web1","delete":"yes"}`, services.EINVALID, "delete", []string{"true or false"}},
		{"negative version", `{"kind":"Server","name":"web1","version":-1}`, services.EINVALID, "version", []string{"a number"}},
		{"trailing data", `{"kind":"Server","name":"web1"} x`, services.EINVALID, "", []string{"after"}},
		{"two documents", `{"kind":"Server","name":"web1"}{"kind":"Server","name":"web2"}`, services.EINVALID, "", []string{"after"}},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := services.DecodeObject([]byte(tc.doc))
			wantError(t, err, tc.code, tc.field, tc.words...)
			if strings.Contains(err.Error(), "Spec.") || strings.Contains(err.Error(), "json: ") {
				t.Fatalf("the error shows Go internals: %v", err)
			}
		})
	}

	good := []struct {
		name, doc string
		check     func(t *testing.T, o services.Object)
	}{
		{"server", `{"kind":"Server","name":"web1","port":2222}`, func(t *testing.T, o services.Object) {
			if o.Kind != services.KindServer || o.Server == nil || o.Server.Name != "web1" || o.Server.Port != 2222 || o.Delete {
				t.Fatalf("%+v", o)
			}
			if o.Ref() != (services.Ref{Kind: services.KindServer, Name: "web1"}) {
				t.Fatalf("ref %v", o.Ref())
			}
		}},
		{"backend", backendWeb, func(t *testing.T, o services.Object) {
			if o.Backend == nil || o.Backend.Actions["save"] != "echo {{.name}}" || o.Server != nil {
				t.Fatalf("%+v", o)
			}
		}},
		{"route deletion with version", `{"kind":"Route","backend":"web","server":"web1","delete":true,"version":7}`, func(t *testing.T, o services.Object) {
			if o.Route == nil || !o.Delete || o.Cond != (services.Condition{Version: 7}) || o.Ref().Name != "web@web1" {
				t.Fatalf("%+v", o)
			}
		}},
		{"resource with raw attrs", `{"kind":"Resource","type":"vhost","name":"a","attrs":{"x":[1,2]}}`, func(t *testing.T, o services.Object) {
			if o.Resource == nil || string(o.Resource.Attrs) != `{"x":[1,2]}` || o.Ref().Name != "vhost/a" {
				t.Fatalf("%+v", o)
			}
		}},
		{"white space around", " \n{\"kind\":\"Server\",\"name\":\"web1\"}\n ", func(t *testing.T, o services.Object) {
			if o.Server == nil {
				t.Fatalf("%+v", o)
			}
		}},
	}
	for _, tc := range good {
		t.Run(tc.name, func(t *testing.T) {
			o, err := services.DecodeObject([]byte(tc.doc))
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, o)
		})
	}
}

func TestDecodeSpec(t *testing.T) {
	o, err := services.DecodeSpec(services.KindServer, []byte(`{"name":"web1"}`))
	if err != nil || o.Kind != services.KindServer || o.Server == nil || o.Server.Name != "web1" {
		t.Fatalf("kind left out: %+v, %v", o, err)
	}
	o, err = services.DecodeSpec(services.KindRoute, []byte(`{"kind":"Route","backend":"web","server":"web1","version":3}`))
	if err != nil || o.Route == nil || o.Cond.Version != 3 {
		t.Fatalf("kind given: %+v, %v", o, err)
	}
	bad := []struct {
		name, kind, doc string
		field           string
		words           []string
	}{
		{"kind mismatch", services.KindServer, `{"kind":"Backend","name":"web"}`, "kind", []string{`"Backend"`, "Server"}},
		{"delete refused", services.KindServer, `{"name":"web1","delete":true}`, "delete", []string{"send DELETE"}},
		{"malformed", services.KindServer, `{"name":`, "", []string{"malformed JSON"}},
		{"unknown field", services.KindResource, `{"type":"t","name":"n","attr":{}}`, "attr", []string{"not a known field"}},
		{"wrong type", services.KindBackend, `{"name":"web","timeout":30}`, "timeout", []string{"a string"}},
		{"trailing data", services.KindServer, `{"name":"web1"}]`, "", []string{"after"}},
		{"unknown endpoint kind", "Host", `{"name":"web1"}`, "kind", []string{`"Host"`}},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := services.DecodeSpec(tc.kind, []byte(tc.doc))
			wantError(t, err, services.EINVALID, tc.field, tc.words...)
		})
	}
}

func TestDecodeApply(t *testing.T) {
	objects := func(n int) string {
		docs := make([]string, n)
		for i := range docs {
			docs[i] = fmt.Sprintf(`{"kind":"Server","name":"s%d"}`, i)
		}
		return `{"objects":[` + strings.Join(docs, ",") + `]}`
	}
	req, err := services.DecodeApply([]byte(objects(services.MaxObjects)))
	if err != nil || len(req.Objects) != services.MaxObjects || req.Objects[999].Server.Name != "s999" {
		t.Fatalf("1000 objects: %d, %v", len(req.Objects), err)
	}
	req, err = services.DecodeApply([]byte(`{"objects":[]}`))
	if err != nil || len(req.Objects) != 0 {
		t.Fatalf("no objects: %+v, %v", req, err)
	}

	bad := []struct {
		name, body  string
		code, field string
		words       []string
	}{
		{"too many objects", objects(services.MaxObjects + 1), services.ETOOLARGE, "objects", []string{"1001", "1000"}},
		{"malformed", `{"objects":[`, services.EINVALID, "", []string{"malformed JSON"}},
		{"empty body", ``, services.EINVALID, "", []string{"malformed JSON"}},
		{"a list", `[{"kind":"Server","name":"web1"}]`, services.EINVALID, "(document)", []string{"an object"}},
		{"objects not a list", `{"objects":{"kind":"Server"}}`, services.EINVALID, "objects", []string{"a list"}},
		{"unknown top-level field", `{"objects":[],"dry_run":true}`, services.EINVALID, "dry_run", []string{"not a known field"}},
		{"trailing data", `{"objects":[]} {}`, services.EINVALID, "", []string{"after the JSON document"}},
		{"unknown kind in object 1", `{"objects":[` + serverWeb1 + `,{"kind":"Host"}]}`, services.EINVALID, "objects[1].kind", []string{`"Host"`}},
		{"unknown field in object 0", `{"objects":[{"kind":"Server","name":"web1","colour":"red"}]}`, services.EINVALID, "objects[0].colour", []string{"not a known field"}},
		{"wrong type in object 2", `{"objects":[` + serverWeb1 + `,` + backendWeb + `,{"kind":"Route","backend":"web","server":"web1","async":1}]}`, services.EINVALID, "objects[2].async", []string{"true or false"}},
		{"object not an object", `{"objects":[1]}`, services.EINVALID, "objects[0].(document)", []string{"an object"}},
		{"object missing kind", `{"objects":[{}]}`, services.EINVALID, "objects[0].kind", []string{"missing"}},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := services.DecodeApply([]byte(tc.body))
			wantError(t, err, tc.code, tc.field, tc.words...)
		})
	}
}
