package agent

import (
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"sync"
)

// maxJSONDepth bounds the nesting of a request body. The agent's request types are two levels
// deep; the bound keeps the key check's recursion small whatever a client sends.
const maxJSONDepth = 32

// keyError is a body that is valid JSON but not one the agent takes: a duplicate key, a key
// that matches a field only when case is ignored, an unknown field, too deep a nesting.
type keyError struct{ msg string }

func (e *keyError) Error() string { return e.msg }

// checkKeys reads exactly one JSON value from data and checks its object keys against the Go
// type t it is about to be decoded into, refusing what encoding/json would take silently: a key
// given twice in one object (the last one would win: {"stage":"PreFlight","stage":"Maintenance"}
// ran Maintenance), and a key that matches a field only case-insensitively ("Stage", "STAGE",
// even "ſtage" for "stage"). It refuses unknown fields itself, naming the known ones, and data
// after the value. Its errors are *keyError, or those of json.Decoder for malformed JSON.
func checkKeys(data []byte, t reflect.Type) error {
	dec := json.NewDecoder(strings.NewReader(string(data)))
	if err := checkValue(dec, t, "", 0); err != nil {
		return err
	}
	switch _, err := dec.Token(); {
	case err == io.EOF:
		return nil
	case err != nil:
		return err
	default:
		return &keyError{"more than one JSON value in the body"}
	}
}

// checkValue reads the next value of dec; t is the type it decodes into (nil: any type, only
// duplicates are refused), at is its place in the body for messages ("", "groups[0]").
func checkValue(dec *json.Decoder, t reflect.Type, at string, depth int) error {
	tok, err := dec.Token()
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	if err != nil {
		return err
	}
	delim, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	if depth >= maxJSONDepth {
		return &keyError{fmt.Sprintf("JSON nested deeper than %d levels", maxJSONDepth)}
	}
	t = underlying(t)
	if delim == '[' {
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for i := 0; dec.More(); i++ {
			if err := checkValue(dec, elem, fmt.Sprintf("%s[%d]", at, i), depth+1); err != nil {
				return err
			}
		}
	} else {
		var fields *structKeys
		var elem reflect.Type
		switch {
		case t != nil && t.Kind() == reflect.Struct:
			fields = keysOf(t)
		case t != nil && t.Kind() == reflect.Map:
			elem = t.Elem()
		}
		seen := map[string]bool{}
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return err
			}
			key, _ := tok.(string)
			if seen[key] {
				return &keyError{fmt.Sprintf("duplicate key %s: send each key once", keyAt(at, key))}
			}
			seen[key] = true
			vt := elem
			if fields != nil {
				if vt, err = fields.lookup(at, key); err != nil {
					return err
				}
			}
			if err := checkValue(dec, vt, joinKey(at, key), depth+1); err != nil {
				return err
			}
		}
	}
	_, err = dec.Token() // the closing ] or }
	return err
}

// underlying is t without pointers; nil when encoding/json hands the value to the type's own
// decoder, whose keys are its business, or when t is an interface.
func underlying(t reflect.Type) reflect.Type {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() == reflect.Interface {
		return nil
	}
	p := reflect.PointerTo(t)
	if p.Implements(reflect.TypeFor[json.Unmarshaler]()) || p.Implements(reflect.TypeFor[encoding.TextUnmarshaler]()) {
		return nil
	}
	return t
}

// structKeys are the JSON keys of a struct type, as encoding/json names its fields.
type structKeys struct {
	types map[string]reflect.Type
	names []string // sorted, for messages
}

var keysCache sync.Map // reflect.Type -> *structKeys

// keysOf returns the keys of struct type t, computed once per type.
func keysOf(t reflect.Type) *structKeys {
	if k, ok := keysCache.Load(t); ok {
		return k.(*structKeys)
	}
	k := &structKeys{types: map[string]reflect.Type{}}
	for _, f := range reflect.VisibleFields(t) {
		tag, hasTag := f.Tag.Lookup("json")
		name, _, _ := strings.Cut(tag, ",")
		switch {
		case tag == "-":
			continue
		case f.Anonymous && name == "" && underlying(f.Type) != nil && underlying(f.Type).Kind() == reflect.Struct:
			continue // its fields are promoted: VisibleFields lists them next
		case !f.IsExported():
			continue
		case !hasTag || name == "":
			name = f.Name
		}
		if _, dup := k.types[name]; !dup {
			k.types[name] = f.Type
			k.names = append(k.names, name)
		}
	}
	slices.Sort(k.names)
	v, _ := keysCache.LoadOrStore(t, k)
	return v.(*structKeys)
}

// lookup returns the type of the field called exactly key.
func (k *structKeys) lookup(at, key string) (reflect.Type, error) {
	if t, ok := k.types[key]; ok {
		return t, nil
	}
	for _, name := range k.names {
		if strings.EqualFold(name, key) {
			return nil, &keyError{fmt.Sprintf("key %s is not %q: keys are case-sensitive, send %q", keyAt(at, key), name, name)}
		}
	}
	if len(k.names) == 0 {
		return nil, &keyError{fmt.Sprintf("unknown field %s: send an empty object", keyAt(at, key))}
	}
	return nil, &keyError{fmt.Sprintf("unknown field %s: the fields are %s", keyAt(at, key), strings.Join(k.names, ", "))}
}

// keyAt quotes key for a message, with the place of its object when that is not the top level.
func keyAt(at, key string) string {
	q := fmt.Sprintf("%q", abbreviate(key))
	if at == "" {
		return q
	}
	return q + " in " + at
}

func joinKey(at, key string) string {
	if at == "" {
		return abbreviate(key)
	}
	return at + "." + abbreviate(key)
}

// isKeyError reports whether err is a refusal of checkKeys rather than malformed JSON.
func isKeyError(err error) bool {
	var k *keyError
	return errors.As(err, &k)
}
