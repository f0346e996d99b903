// kstatus prints the verdict of sigs.k8s.io/cli-utils' kstatus (the library Flux, kpt and Config Sync
// use) for each Kubernetes object on stdin: JSON or YAML, one object, a List, or several documents.
// One JSON line per object: {"kind","namespace","name","status","message"}; status is Current,
// InProgress, Failed, Terminating, NotFound or Unknown. Input that is no object exits 1 naming it.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	Status    string `json:"status"`
	Message   string `json:"message"`
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "kstatus: %v\n", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	decoder := yaml.NewYAMLOrJSONDecoder(in, 4096)
	enc := json.NewEncoder(out)
	for doc := 1; ; doc++ {
		var raw json.RawMessage
		if err := decoder.Decode(&raw); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("document %d: %w", doc, err)
		}
		if len(raw) == 0 || string(raw) == "null" {
			continue // an empty YAML document
		}
		objs, err := objects(raw)
		if err != nil {
			return fmt.Errorf("document %d: %w", doc, err)
		}
		for i, u := range objs {
			res, err := status.Compute(u)
			if err != nil {
				return fmt.Errorf("document %d, object %d (%s %s): %w", doc, i+1, u.GetKind(), u.GetName(), err)
			}
			v := verdict{Kind: u.GetKind(), Namespace: u.GetNamespace(), Name: u.GetName(), Status: res.Status.String(), Message: res.Message}
			if err := enc.Encode(v); err != nil {
				return err
			}
		}
	}
}

// objects decodes one document (integers stay integers, as kstatus expects) and expands a List.
func objects(raw []byte) ([]*unstructured.Unstructured, error) {
	decoded, _, err := unstructured.UnstructuredJSONScheme.Decode(raw, nil, nil)
	if err != nil {
		return nil, err
	}
	switch o := decoded.(type) {
	case *unstructured.Unstructured:
		return []*unstructured.Unstructured{o}, nil
	case *unstructured.UnstructuredList:
		out := make([]*unstructured.Unstructured, len(o.Items))
		for i := range o.Items {
			out[i] = &o.Items[i]
		}
		return out, nil
	default:
		return nil, fmt.Errorf("not an object: %T", decoded)
	}
}
