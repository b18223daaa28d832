package services

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Object is one document of an apply: a model object to save, or to delete
// when Delete is set. Exactly one of the spec fields is set, the one of Kind.
type Object struct {
	Kind     string
	Delete   bool
	Server   *ServerSpec
	Backend  *BackendSpec
	Route    *RouteSpec
	Resource *ResourceSpec
	Site     *SiteSpec
	// Cond is what the caller expects of the object's current version;
	// the zero value expects nothing.
	Cond Condition
}

// Condition is a precondition on an object's version (HTTP If-Match and
// If-None-Match).
type Condition struct {
	Version   uint64 // > 0: the object must be at exactly this version
	MustExist bool   // the object must exist (If-Match: *, DELETE of one object)
	MustNotBe bool   // the object must not exist yet (POST, If-None-Match: *)
}

// Ref names the object. It is valid only after the object's spec validated.
func (o Object) Ref() Ref {
	switch {
	case o.Server != nil:
		return Ref{KindServer, o.Server.Name}
	case o.Backend != nil:
		return Ref{KindBackend, o.Backend.Name}
	case o.Route != nil:
		return Ref{KindRoute, RouteName(o.Route.Backend, o.Route.Server)}
	case o.Resource != nil:
		return Ref{KindResource, ResourceName(o.Resource.Type, o.Resource.Name)}
	case o.Site != nil:
		return Ref{KindSite, o.Site.Name}
	}
	return Ref{Kind: o.Kind}
}

// Identify fills in the fields that name o from name, the object's name as
// in its URL (a route's "<backend>@<server>", a resource's "<type>/<name>"),
// and refuses a document that names another object.
func (o *Object) Identify(name string) error {
	set := func(field string, dst *string, want string) error {
		switch *dst {
		case "":
			*dst = want
		case want:
		default:
			return FieldErrorf(EINVALID, field, "is %q, but the URL names %q", *dst, want)
		}
		return nil
	}
	switch {
	case o.Server != nil:
		return set("name", &o.Server.Name, name)
	case o.Backend != nil:
		return set("name", &o.Backend.Name, name)
	case o.Route != nil:
		backend, server, err := ParseRouteName(name)
		if err != nil {
			return err
		}
		if err := set("backend", &o.Route.Backend, backend); err != nil {
			return err
		}
		return set("server", &o.Route.Server, server)
	case o.Resource != nil:
		typ, n, _ := strings.Cut(name, "/")
		if err := set("type", &o.Resource.Type, typ); err != nil {
			return err
		}
		return set("name", &o.Resource.Name, n)
	case o.Site != nil:
		return set("name", &o.Site.Name, name)
	}
	return FieldErrorf(EINVALID, "kind", "%q is not a kind", o.Kind)
}

// header holds the fields every document has besides its kind's own.
type header struct {
	Kind   string `json:"kind"`
	Delete bool   `json:"delete,omitempty"`
	// Version, when set, is the version the writer read: the object must
	// still be at it (as If-Match). Documents read from the API carry it.
	Version uint64 `json:"version,omitempty"`
}

// DecodeObject decodes one JSON document of an apply. Unknown kinds and
// unknown fields are refused, naming them.
func DecodeObject(data []byte) (Object, error) {
	var h header
	if err := json.Unmarshal(data, &h); err != nil {
		return Object{}, jsonError(err)
	}
	return decodeAs(h, data)
}

// DecodeSpec decodes the JSON body of a single-object write (PUT or POST on
// a kind's endpoint): the same document as in an apply, where kind may be
// left out and delete is not allowed.
func DecodeSpec(kind string, data []byte) (Object, error) {
	var h header
	if err := json.Unmarshal(data, &h); err != nil {
		return Object{}, jsonError(err)
	}
	switch {
	case h.Kind == "":
		h.Kind = kind
	case h.Kind != kind:
		return Object{}, FieldErrorf(EINVALID, "kind", "is %q, but this endpoint takes a %s", h.Kind, kind)
	}
	if h.Delete {
		return Object{}, FieldErrorf(EINVALID, "delete", "is not allowed here; send DELETE to delete")
	}
	return decodeAs(h, data)
}

func decodeAs(h header, data []byte) (Object, error) {
	o := Object{Kind: h.Kind, Delete: h.Delete, Cond: Condition{Version: h.Version}}
	var err error
	switch h.Kind {
	case KindServer:
		o.Server = new(ServerSpec)
		err = decodeStrict(data, &struct {
			header
			*ServerSpec
		}{ServerSpec: o.Server})
	case KindBackend:
		o.Backend = new(BackendSpec)
		err = decodeStrict(data, &struct {
			header
			*BackendSpec
		}{BackendSpec: o.Backend})
	case KindRoute:
		o.Route = new(RouteSpec)
		err = decodeStrict(data, &struct {
			header
			*RouteSpec
		}{RouteSpec: o.Route})
	case KindResource:
		o.Resource = new(ResourceSpec)
		err = decodeStrict(data, &struct {
			header
			*ResourceSpec
		}{ResourceSpec: o.Resource})
	case KindSite:
		o.Site = new(SiteSpec)
		err = decodeStrict(data, &struct {
			header
			*SiteSpec
		}{SiteSpec: o.Site})
	case "":
		return Object{}, FieldErrorf(EINVALID, "kind", "is missing; use one of %s", kindList)
	default:
		return Object{}, FieldErrorf(EINVALID, "kind", "%q is not a kind; use one of %s", h.Kind, kindList)
	}
	return o, err
}

// DecodeJSON decodes exactly one JSON document into v, refusing unknown
// fields and trailing data; errors name the field.
func DecodeJSON(data []byte, v any) error { return decodeStrict(data, v) }

// decodeStrict decodes exactly one JSON object into v, refusing unknown
// fields and trailing data.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Errorf(EINVALID, "unexpected data after the JSON document")
	}
	return nil
}

// jsonError turns an encoding/json error into an invalid-input error that
// names the field when the decoder knows it.
func jsonError(err error) error {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		field := specField(typeErr.Field)
		if field == "" {
			field = "(document)"
		}
		return FieldErrorf(EINVALID, field, "must be %s, not %s", jsonKind(typeErr.Type.Kind().String()), typeErr.Value)
	case errors.As(err, &syntaxErr):
		return Errorf(EINVALID, "malformed JSON at byte %d: %s", syntaxErr.Offset, syntaxErr.Error())
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return Errorf(EINVALID, "malformed JSON: the document ends early")
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return FieldErrorf(EINVALID, strings.Trim(name, `"`), "is not a known field")
	}
	return Errorf(EINVALID, "malformed JSON: %s", strings.TrimPrefix(err.Error(), "json: "))
}

// specField drops the Go names of the structs decodeAs embeds from a field
// path the decoder reports ("ServerSpec.port" is the document's "port").
func specField(path string) string {
	parts := strings.Split(path, ".")
	parts = slices.DeleteFunc(parts, func(p string) bool {
		switch p {
		case "header", "ServerSpec", "BackendSpec", "RouteSpec", "ResourceSpec", "SiteSpec":
			return true
		}
		return false
	})
	return strings.Join(parts, ".")
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "a string"
	case "bool":
		return "true or false"
	case "map", "struct":
		return "an object"
	case "slice", "array":
		return "a list"
	case "ptr":
		return "a value"
	}
	if strings.HasPrefix(goKind, "int") || strings.HasPrefix(goKind, "uint") || strings.HasPrefix(goKind, "float") {
		return "a number"
	}
	return fmt.Sprintf("a %s", goKind)
}

// Named returns an object of kind with only its name set (from the name as
// in its URL), as a DELETE needs.
func Named(kind, name string) (Object, error) {
	o := Object{Kind: kind}
	switch kind {
	case KindServer:
		o.Server = new(ServerSpec)
	case KindBackend:
		o.Backend = new(BackendSpec)
	case KindRoute:
		o.Route = new(RouteSpec)
	case KindResource:
		o.Resource = new(ResourceSpec)
	case KindSite:
		o.Site = new(SiteSpec)
	}
	return o, o.Identify(name)
}
