package state

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"sync"
)

// Unknown holds the fields of a stored record that this version of kvmctl does not know (a
// newer one wrote them): reading and rewriting the record keeps them, so an older kvmctl never
// erases what a newer one recorded.
type Unknown map[string]json.RawMessage

var knownKeys sync.Map // reflect.Type -> map[string]bool

// keysOf returns the JSON keys of struct type t (its fields' names as encoding/json writes them).
func keysOf(t reflect.Type) map[string]bool {
	if k, ok := knownKeys.Load(t); ok {
		return k.(map[string]bool)
	}
	keys := map[string]bool{}
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := f.Tag.Get("json")
			if tag == "-" {
				continue
			}
			name, _, _ := strings.Cut(tag, ",")
			if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
				walk(f.Type)
				continue
			}
			if !f.IsExported() {
				continue
			}
			if name == "" {
				name = f.Name
			}
			keys[name] = true
		}
	}
	walk(t)
	knownKeys.Store(t, keys)
	return keys
}

// UnmarshalKeeping decodes b into v (a pointer to a struct without its own UnmarshalJSON) and
// returns the fields v's type does not know.
func UnmarshalKeeping(b []byte, v any) (Unknown, error) {
	if err := json.Unmarshal(b, v); err != nil {
		return nil, err
	}
	if !bytes.HasPrefix(bytes.TrimSpace(b), []byte("{")) {
		return nil, nil
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(b, &all); err != nil {
		return nil, err
	}
	known := keysOf(reflect.TypeOf(v).Elem())
	var extra Unknown
	for k, raw := range all {
		if !known[k] {
			if extra == nil {
				extra = Unknown{}
			}
			extra[k] = raw
		}
	}
	return extra, nil
}

// MarshalKeeping encodes v (a struct without its own MarshalJSON) with the unknown fields extra
// added back.
func MarshalKeeping(v any, extra Unknown) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil || len(extra) == 0 {
		return raw, err
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(raw, &all); err != nil {
		return nil, err
	}
	for k, v := range extra {
		if _, ok := all[k]; !ok {
			all[k] = v
		}
	}
	return json.Marshal(all)
}
