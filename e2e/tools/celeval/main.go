// celeval is the test bed's independent CEL implementation: cel-go, the one the Kubernetes API
// server embeds (the version k8s.io/apiserver of the bed's Kubernetes requires). It reads
// {"variables": {...}, "rules": [{"name", "expression"}]} on standard input, declares every
// variable as dyn, and prints {"results": [{"rule", "compiled", "passed", "error"}]}: a rule passes
// only when it evaluates to true.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
)

// The variables a ModelPolicy rule sees (src/policy/variables.rs NAMES).
var names = []string{"repository", "digest", "tag", "descriptor", "config", "modelfs", "annotations", "layers", "referrers", "weights", "verified"}

type rule struct {
	Name       string `json:"name"`
	Expression string `json:"expression"`
}

type input struct {
	Variables map[string]any `json:"variables"`
	Rules     []rule         `json:"rules"`
}

type result struct {
	Rule     string `json:"rule"`
	Compiled bool   `json:"compiled"`
	Passed   bool   `json:"passed"`
	Error    string `json:"error,omitempty"`
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "celeval: %v\n", err)
		os.Exit(2)
	}
}

func run(in io.Reader, out io.Writer) error {
	raw, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	// Integers stay integers (CEL int), as Kubernetes converts JSON for CEL; other numbers are doubles.
	dec.UseNumber()
	var doc input
	if err := dec.Decode(&doc); err != nil {
		return fmt.Errorf("reading input: %w", err)
	}
	opts := []cel.EnvOption{}
	for _, n := range names {
		opts = append(opts, cel.Variable(n, cel.DynType))
	}
	env, err := cel.NewEnv(opts...)
	if err != nil {
		return err
	}
	vars := map[string]any{}
	for k, v := range doc.Variables {
		vars[k] = convert(v)
	}
	results := make([]result, 0, len(doc.Rules))
	for _, r := range doc.Rules {
		results = append(results, evaluate(env, r, vars))
	}
	return json.NewEncoder(out).Encode(map[string]any{"results": results})
}

func evaluate(env *cel.Env, r rule, vars map[string]any) result {
	ast, iss := env.Compile(r.Expression)
	if iss != nil && iss.Err() != nil {
		return result{Rule: r.Name, Error: iss.Err().Error()}
	}
	prg, err := env.Program(ast)
	if err != nil {
		return result{Rule: r.Name, Error: err.Error()}
	}
	val, _, err := prg.Eval(vars)
	if err != nil {
		return result{Rule: r.Name, Compiled: true, Error: err.Error()}
	}
	if types.IsError(val) {
		return result{Rule: r.Name, Compiled: true, Error: fmt.Sprint(val)}
	}
	return result{Rule: r.Name, Compiled: true, Passed: val == types.True}
}

func convert(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = convert(e)
		}
		return m
	case []any:
		l := make([]any, len(x))
		for i, e := range x {
			l[i] = convert(e)
		}
		return l
	default:
		return v
	}
}
