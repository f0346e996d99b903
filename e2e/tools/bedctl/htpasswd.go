package main

import (
	"fmt"

	"golang.org/x/crypto/bcrypt"
)

// htpasswd prints the line distribution's htpasswd auth expects (bcrypt only).
func htpasswd(args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("want USER PASSWORD")
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(args[1]), bcrypt.DefaultCost)
	if err != nil {
		return err
	}
	fmt.Printf("%s:%s\n", args[0], hash)
	return nil
}
