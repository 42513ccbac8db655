// Package argocdhealth runs charts/siphon/argocd-health.lua the way Argo CD
// runs a resource health check: in gopher-lua, with only the base, table and
// package libraries open, the resource as a Lua table in the global `obj`,
// and the returned table read as {status, message}.
package argocdhealth

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	lua "github.com/yuin/gopher-lua"
)

// The statuses Argo CD accepts from a health script.
var validStatus = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true,
	"Suspended": true, "Missing": true, "Unknown": true,
}

type health struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

// toLua turns decoded JSON into Lua values as Argo does for an
// unstructured object: objects and arrays become tables (arrays 1-based),
// numbers LNumber, JSON null nil.
func toLua(L *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case json.Number:
		f, err := v.Float64()
		if err != nil {
			panic(fmt.Sprintf("number %q: %v", v, err))
		}
		return lua.LNumber(f)
	case []any:
		t := L.CreateTable(len(v), 0)
		for _, item := range v {
			t.Append(toLua(L, item))
		}
		return t
	case map[string]any:
		t := L.CreateTable(0, len(v))
		for key, item := range v {
			t.RawSetString(key, toLua(L, item))
		}
		return t
	default:
		panic(fmt.Sprintf("unexpected JSON value %T", v))
	}
}

// fromLua turns the returned table back into Go values (for JSON).
func fromLua(v lua.LValue) any {
	switch v := v.(type) {
	case *lua.LTable:
		if v.MaxN() > 0 {
			var out []any
			v.ForEach(func(_, item lua.LValue) { out = append(out, fromLua(item)) })
			return out
		}
		out := map[string]any{}
		v.ForEach(func(key, item lua.LValue) { out[key.String()] = fromLua(item) })
		return out
	case lua.LString:
		return string(v)
	case lua.LNumber:
		return float64(v)
	case lua.LBool:
		return bool(v)
	default:
		return nil
	}
}

// Health is what the script returned.
type Health = health

// Evaluate executes the health script against one object (JSON).
func Evaluate(source string, object []byte) (Health, error) {
	dec := json.NewDecoder(bytes.NewReader(object))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		return health{}, fmt.Errorf("the object is not JSON: %w", err)
	}

	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer L.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		L.Push(L.NewFunction(lib.open))
		L.Push(lua.LString(lib.name))
		L.Call(1, 0)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	L.SetContext(ctx)
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(source); err != nil {
		return health{}, fmt.Errorf("the script failed: %w", err)
	}
	ret, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		return health{}, fmt.Errorf("the script returned %s, not a table", L.Get(-1).Type())
	}
	raw, err := json.Marshal(fromLua(ret))
	if err != nil {
		return health{}, err
	}
	var hs health
	if err := json.Unmarshal(raw, &hs); err != nil {
		return health{}, fmt.Errorf("the returned table %s is not {status, message}: %w", raw, err)
	}
	if !validStatus[hs.Status] {
		return health{}, fmt.Errorf("status %q is not one Argo CD accepts", hs.Status)
	}
	return hs, nil
}

