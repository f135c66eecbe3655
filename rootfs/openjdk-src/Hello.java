// A Java program compiled at build time and run by openjdk-17 headless as init in a tailor microVM.
public class Hello {
    public static void main(String[] args) {
        System.out.println("Hello from Java " + System.getProperty("java.version") + " running as init");
    }
}
